"""Default hyperparameters of the Flax linen example."""
