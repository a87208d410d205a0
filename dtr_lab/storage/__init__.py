"""A run's files on disk: its directory and what made it, atomic temporary files, checkpoints."""
