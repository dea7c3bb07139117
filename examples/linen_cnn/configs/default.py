"""Default hyperparameters: SGD with momentum on the 8x8 digits, GC on.

The same defaults for the NNX and the linen CNN example, from
``examples/common/cnn.py`` (its ``default_config`` lists the fields). About
15 s on 2 CPU cores. For Fashion-MNIST, override on the command line:
``--config.dataset=fashion_mnist --config.num_epochs=5``.
"""

from examples.common.cnn import default_config as get_config

__all__ = ["get_config"]
