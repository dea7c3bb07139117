"""Default hyperparameters: SGD with momentum on the 8x8 digits, GC on.

About 15 s on 2 CPU cores. For Fashion-MNIST, override on the command line:
``--config.dataset=fashion_mnist --config.num_epochs=5``.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """The default configuration.

    Returns:
        A ``ConfigDict`` with the fields below.

    Example:
        >>> from examples.linen_cnn.configs import default
        >>> config = default.get_config()
        >>> config.dataset, config.optimizer, config.gc
        ('digits', 'sgd', True)
    """
    config = ml_collections.ConfigDict()
    # Data: "digits" (bundled with scikit-learn), "fashion_mnist" or "mnist"
    # (IDX files: see examples/datasets.py for where they are looked for).
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    config.download = True
    # Train on the first train_limit images only, test on the first test_limit
    # (None: all); for quick runs and the tests.
    config.train_limit = config_dict.placeholder(int)
    config.test_limit = config_dict.placeholder(int)

    # "sgd" (with `momentum`; 0 for plain SGD), "rmsprop" or "adam".
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    config.momentum = 0.9
    # Gradient Centralization ahead of the optimizer, on every kernel or, with
    # conv_only, only on the conv kernels (the paper's GCC).
    config.gc = True
    config.conv_only = False

    config.dropout_rate = 0.5
    config.batch_size = 64
    config.eval_batch_size = 1000
    config.num_epochs = 10
    config.seed = 0
    return config
