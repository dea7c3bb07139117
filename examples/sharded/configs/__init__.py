"""Default hyperparameters of the sharded example."""
