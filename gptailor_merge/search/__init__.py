"""The search over genomes: the space and its seeds (`space`), local moves (`neighbours`), the
evaluator and the optimizer plumbing (`search`), the one successive-halving loop over a pool of one
or of N workers (`loop`) and the append-only journal every trial is written to (`journal`)."""
