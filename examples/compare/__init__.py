"""GC vs no GC on the article's CNN, measured honestly (see README.md here)."""
