"""Trains the Flax NNX CNN example; flags as in every Flax example.

Run it from the repository root, as a module:

    python -m examples.nnx_cnn.main --workdir=/tmp/nnx_cnn
    python -m examples.nnx_cnn.main --workdir=/tmp/nnx_cnn \
        --config=examples/nnx_cnn/configs/default.py \
        --config.dataset=fashion_mnist --config.gc=False

The flags (``--workdir``, ``--config`` and ``--config.<field>=value``) are
defined in ``examples/common/cli.py``.
"""

import os

from examples.common import cli
from examples.nnx_cnn import train

if __name__ == "__main__":
    cli.run(train.train_and_evaluate, os.path.dirname(__file__))
