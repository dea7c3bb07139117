"""Default hyperparameters: the example CNN on the digits, 4x2 mesh, GC + SGD.

Training runs twice, sharded and then on one device for the equality check,
about 10 s each on 2 CPU cores once compiled. Override on the command line,
e.g. ``--config.mesh_shape="(2, 4)" --config.compare_single_device=False``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The default configuration.

    Returns:
        A ``ConfigDict`` with the fields below.

    Example:
        >>> from examples.sharded.configs import default
        >>> config = default.get_config()
        >>> config.mesh_shape, config.optimizer, config.gc
        ((4, 2), 'sgd', True)
    """
    config = ml_collections.ConfigDict()
    # Data: see examples/datasets.py. Train on the first train_limit images
    # only (None: all); for quick runs and the test.
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    config.train_limit = config_dict.placeholder(int)

    # (data, fsdp): the batch is split over both axes, each large kernel and
    # its optimizer state over "fsdp". data * fsdp devices are needed.
    config.mesh_shape = (4, 2)
    # Leaves with fewer elements are replicated: a 4 KiB kernel costs less
    # to keep on every device than to gather at every step.
    config.min_shard_size = 1024

    # "sgd" (with `momentum`; 0 for plain SGD) or "adam".
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    config.momentum = 0.9
    # Gradient Centralization ahead of the optimizer, on every kernel or, with
    # conv_only, only on the conv kernels (the paper's GCC).
    config.gc = True
    config.conv_only = False

    config.dropout_rate = 0.5
    # The global batch, split over all data * fsdp devices.
    config.batch_size = 128
    config.num_epochs = 10
    config.seed = 0
    # Train again from the same seed on one device, no mesh, and compare the
    # params after every epoch.
    config.compare_single_device = True
    return config
