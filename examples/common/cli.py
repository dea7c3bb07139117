"""The command line every example's ``main.py`` runs: absl flags, a config file.

``--workdir`` and ``--config`` (an ml_collections config file, by default the
example's ``configs/default.py``; override any field with
``--config.<field>=value``), as in Flax's own examples.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def run(
    train_and_evaluate: Callable[[ml_collections.ConfigDict, str | None], Any],
    example_dir: str,
    *,
    workdir_help: str = "Directory for metrics.json.",
    require_workdir: bool = True,
) -> None:
    """Defines the flags, parses them and calls ``train_and_evaluate``.

    Args:
      train_and_evaluate: the example's ``train.train_and_evaluate(config,
        workdir)``.
      example_dir: the example's folder (its ``configs/default.py`` is the
        default config file).
      workdir_help: what ``--workdir`` is for (the CNN examples': their
        ``metrics.json``).
      require_workdir: whether ``--workdir`` must be given (as the CNN
        examples want).
    """
    flags.DEFINE_string("workdir", None, workdir_help, required=require_workdir)
    config_flags.DEFINE_config_file(
        "config",
        os.path.join(example_dir, "configs", "default.py"),
        "Configuration file (default: configs/default.py of the example); "
        "override fields with --config.<field>=value.",
        lock_config=True,
    )
    # --help lists the key flags of the module run (sys.argv[0]): these are.
    for name in ("workdir", "config"):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])

    def main(argv: list[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        logging.info("Config:\n%s", FLAGS.config)
        train_and_evaluate(FLAGS.config, FLAGS.workdir)

    app.run(main)


def command(
    module: str,
    config: ml_collections.ConfigDict,
    defaults: ml_collections.ConfigDict,
    workdir: str | None,
) -> str:
    """The command line that runs ``module`` with ``config``.

    Only the fields that differ from ``defaults`` are given, so a default run
    records just ``python -m module``.
    """
    base = defaults.to_dict()
    args = [f"--config.{k}={v}" for k, v in config.to_dict().items() if v != base[k]]
    args += [] if workdir is None else [f"--workdir={workdir}"]
    return shlex.join(["python", "-m", module, *args])
