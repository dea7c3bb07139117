"""Trains the character transformer with and without GC; flags as in Flax examples.

Run it from the repository root, as a module:

    python -m examples.transformer.main
    python -m examples.transformer.main --workdir=/tmp/transformer \
        --config.steps=2000 --config.seeds=5 --config.arms=gc,baseline,rank_rule

``--workdir``, ``--config`` and ``--config.<field>=value`` come from
``examples/common/cli.py``.
"""

import os

from examples.common import cli
from examples.transformer import train

if __name__ == "__main__":
    cli.run(
        train.train_and_evaluate,
        os.path.dirname(__file__),
        workdir_help="If given, results.json is written there.",
        require_workdir=False,
    )
