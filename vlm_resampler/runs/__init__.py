"""Run directories: layout, atomic files, checkpoints with their metadata, and rebuilding."""
