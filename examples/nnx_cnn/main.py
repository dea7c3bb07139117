"""Trains the Flax NNX CNN example; flags as in every Flax example.

Run it from the repository root, as a module:

    python -m examples.nnx_cnn.main --workdir=/tmp/nnx_cnn
    python -m examples.nnx_cnn.main --workdir=/tmp/nnx_cnn \
        --config=examples/nnx_cnn/configs/default.py \
        --config.dataset=fashion_mnist --config.gc=False
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from examples.nnx_cnn import train

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for metrics.json.")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration file (default: configs/default.py here); override "
    "fields with --config.<field>=value.",
    lock_config=True,
)
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.info("Config:\n%s", FLAGS.config)
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
