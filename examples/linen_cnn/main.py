"""The command line of the Flax linen CNN example (``examples/common/cli.py``).

    python -m examples.linen_cnn.main --workdir=/tmp/linen_cnn --config.gc=False

``--workdir`` is required; ``--config.<field>=value`` overrides a field of
``configs/default.py``.
"""

import os

from examples.common import cli
from examples.linen_cnn import train

if __name__ == "__main__":
    cli.run(train.train_and_evaluate, os.path.dirname(__file__))
