"""The search over genomes: the space and its seeds (`space`), local moves
(`neighbours`), the successive-halving loop and its evaluator (`search`, `search_async` for a
worker pool) and the append-only journal every trial is written to (`journal`)."""
