"""Examples for optax-gc; run them as modules from the repository root."""
