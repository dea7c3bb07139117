"""Default hyperparameters: the example CNN on the digits, 4x2 mesh, GC + SGD.

Training runs twice, sharded and then on one device for the equality check,
about 10 s each on 2 CPU cores once compiled. Override on the command line,
e.g. ``--config.mesh_shape="(2, 4)" --config.compare_single_device=False``.
"""

import ml_collections

from examples.common import cnn


def get_config() -> ml_collections.ConfigDict:
    """The CNN examples' defaults (``examples/common/cnn.py``), on a mesh.

    Example:
        >>> from examples.sharded.configs import default
        >>> config = default.get_config()
        >>> config.mesh_shape, config.optimizer, config.batch_size
        ((4, 2), 'sgd', 128)
    """
    config = cnn.default_config()
    # The global batch, split over all data * fsdp devices; so is every
    # evaluation batch (eval_batch_size, rounded up to a multiple of them).
    config.batch_size = 128
    # (data, fsdp): the batch is split over both axes, each large kernel and
    # its optimizer state over "fsdp". data * fsdp devices are needed.
    config.mesh_shape = (4, 2)
    # Leaves with fewer elements are replicated: a 4 KiB kernel costs less
    # to keep on every device than to gather at every step.
    config.min_shard_size = 1024
    # Train again from the same seed on one device, no mesh, and compare the
    # params after every epoch.
    config.compare_single_device = True
    # The name of an optax_gc recipe (e.g. "adamw": optax_gc.adamw(
    # learning_rate)) to train with instead of `optimizer`, `gc`, ...
    config.recipe = ""
    # Above 1: optax.MultiSteps, one update per this many batches.
    config.accumulate_steps = 1
    # Above 0: save a checkpoint to <workdir>/checkpoints every this many
    # steps and at the end, keep the newest checkpoint_keep, and resume from
    # the newest sound one on start.
    config.checkpoint_every = 0
    config.checkpoint_keep = 3
    return config
