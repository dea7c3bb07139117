"""Configurations of the transformer example."""
