"""The comparison's defaults: digits, RMSprop, SGD and Adam, 3 seeds.

About 1.5 minutes on 2 CPU cores. Override any field on the command line,
e.g. ``--config.dataset=fashion_mnist --config.seeds=5 --config.epochs=3``;
``--config.model=resnet`` trains a BatchNorm ResNet with the authors' SGD
recipe instead of the article's CNN (the ``resnet_*`` fields).
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Every option of the comparison, with its default.

    Example:
        >>> from examples.compare.configs import default
        >>> print(default.get_config().optimizers)
        rmsprop,sgd,adam
    """
    config = ml_collections.ConfigDict()
    # "cnn": the article's CNN, GC vs baseline for each of `optimizers`.
    # "resnet": a CIFAR-style ResNet with BatchNorm trained with the authors'
    # SGD recipe (optax_gc.sgd, momentum 0.9, coupled weight decay, warmup
    # then cosine decay), the baseline against the GC variants of
    # `resnet_arms`; `optimizers`, `lr_*`, `conv_only` and `apply_to` are
    # the CNN's and must stay at their defaults.
    config.model = "cnn"
    # "digits" (bundled with scikit-learn, offline), "fashion_mnist" or
    # "mnist" (IDX files in data_dir or found as examples/datasets.py says),
    # "horses_or_humans" (its two zips in data_dir, the cache or a
    # download; 150x150 RGB, 10 epochs of 32 by default), or "cifar10"
    # (cifar-10-python.tar.gz in data_dir, the cache or a checked download).
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    # Use only the first N train / held-out images (None: all).
    config.train_limit = config_dict.placeholder(int)
    config.test_limit = config_dict.placeholder(int)

    # Comma-separated subset of rmsprop,sgd,adam; each trains both arms.
    config.optimizers = "rmsprop,sgd,adam"
    # Learning rates: RMSprop's as the article's; SGD's with momentum 0.9.
    config.update(lr_rmsprop=1e-4, lr_sgd=0.01, lr_adam=1e-3)
    # GC on conv kernels only (GCC), and on "gradient" (the paper) or on the
    # optimizer's step ("update").
    config.conv_only = False
    config.apply_to = "gradient"

    # Seeds 0..seeds-1. Epochs and batch size: None for the dataset's
    # default (digits 20 epochs of batch 32; fashion_mnist, mnist 3 of 128;
    # with model="resnet" see train.RESNET_EPOCHS, batch 128).
    config.seeds = 3
    config.epochs = config_dict.placeholder(int)
    config.batch_size = config_dict.placeholder(int)
    # Held-out evaluations per epoch (points on the curves); train metrics
    # are then running means since the previous one.
    config.evals_per_epoch = 1

    # model="resnet": ResNet-(6 * blocks + 2); blocks=1, width=16 is
    # ResNet-8, 3 and 16 ResNet-20. Peak learning rate, SGD momentum 0.9,
    # coupled weight decay on every parameter (the authors' SGD_GC),
    # linear warmup then cosine decay to 0 at the last step.
    config.resnet_blocks = 1
    config.resnet_width = 16
    config.resnet_lr = 0.1
    config.resnet_weight_decay = 5e-4
    config.resnet_warmup_epochs = 0.5
    # The GC arms, each against the same baseline: "gc" (SGD_GC), "gcc"
    # (SGD_GCC, conv kernels only) and "gc_update" (GC on the step).
    config.resnet_arms = "gc,gcc,gc_update"
    config.progress = True  # a progress bar on stderr
    return config
