"""A run's files and their bookkeeping: the folder layout, checkpoints, metrics.json, provenance, Ctrl-C and
Lightning's notices, the results tables and the trainer comparison."""
