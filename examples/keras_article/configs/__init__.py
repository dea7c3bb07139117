"""Configs of the Keras article example."""
