"""The article's Keras experiment, in its protocol and in a fair one.

Run it from the repository root, as a module:

    python -m examples.keras_article.main                          # fair
    python -m examples.keras_article.main --config.protocol=article

``--workdir`` (default ``outputs/keras_article-<protocol>``), ``--config``
and ``--config.<field>=value`` come from ``examples/common/cli.py``; the
fields are in ``configs/default.py``.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")  # before keras is first imported

from examples.common import cli
from examples.keras_article import train

if __name__ == "__main__":
    workdir_help = "Output folder (default: outputs/keras_article-<protocol>)."
    cli.run(
        train.train_and_evaluate,
        os.path.dirname(__file__),
        workdir_help=workdir_help,
        require_workdir=False,
    )
