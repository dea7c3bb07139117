"""Flax NNX example: the article's CNN trained with Gradient Centralization."""
