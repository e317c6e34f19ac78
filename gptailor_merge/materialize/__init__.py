"""Genome -> model: the mergekit recipe (`recipe`, the interchange format; `paper` for the
GPTailor authors' published results), the two backends that turn one into weights (`materialize`:
stock mergekit; `stitch`: the in-memory stitcher, equal by test) and prefix reuse (`prefix`)."""
