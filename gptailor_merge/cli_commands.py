"""More CLI commands (optimize, evaluate, prune, report, push), registered on import."""
