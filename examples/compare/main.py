"""GC vs no GC on the article's CNN; flags as in the Flax examples.

Run it from the repository root, as a module:

    python -m examples.compare                    # digits, about 1.5 minutes
    python -m examples.compare --config.dataset=fashion_mnist \
        --config.seeds=5 --config.epochs=3 --workdir=/tmp/compare
    python -m examples.compare --helpfull

``--workdir`` (default ``outputs/compare-<dataset>``), ``--config`` and
``--config.<field>=value`` come from ``examples/common/cli.py``; the fields
are in ``configs/default.py``.
"""

import os

from examples.common import cli
from examples.compare import train


def main() -> None:
    """Parses the flags and runs the comparison."""
    cli.run(
        train.train_and_evaluate,
        os.path.dirname(__file__),
        workdir_help="Output folder (default: outputs/compare-<dataset>).",
        require_workdir=False,
    )


if __name__ == "__main__":
    main()
