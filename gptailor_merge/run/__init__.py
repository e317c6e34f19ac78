"""One run end to end: resolving a `RunConfig` into a family and tasks (`resolve`), the run
folder and its resume fingerprint (`run_folder`), `optimize` (search -> held-out check ->
repair -> report), the Ray pool (`parallel`), held-out scoring (`heldout`), repairing the best
result (`repair_run`) and a single baseline prune (`prune`)."""
