"""What the examples share: one helper per job (see README.md here)."""
