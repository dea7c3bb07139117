"""Default hyperparameters of the Flax NNX example."""
