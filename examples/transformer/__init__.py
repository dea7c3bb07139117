"""A character-level transformer trained with GC on its true fan-in axes."""
