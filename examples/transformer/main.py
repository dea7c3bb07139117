"""Trains the character transformer with and without GC; flags as in Flax examples.

Run it from the repository root, as a module:

    python -m examples.transformer.main
    python -m examples.transformer.main --workdir=/tmp/transformer \
        --config.steps=2000 --config.seeds=5 --config.arms=gc,baseline,rank_rule
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from examples.transformer import train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "If given, results.json is written there.")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration file (default: configs/default.py here); override "
    "fields with --config.<field>=value.",
    lock_config=True,
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.info("Config:\n%s", FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
