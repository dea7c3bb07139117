"""Benchmarks of optax_gc's cost (scripts, not tests): see README.md here."""
