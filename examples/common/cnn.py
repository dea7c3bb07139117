"""The training loop both CNN examples share; only the framework part differs.

``examples/nnx_cnn`` and ``examples/linen_cnn`` train the same network with
the same configuration (:func:`default_config`), data, batches, metrics and
checks. Each gives :func:`train_and_evaluate` a :class:`Framework`: how to
build its state, take a train step and evaluate a padded batch, and where
its parameters are. Everything else is here, once.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from ml_collections import config_dict

from examples import datasets
from examples.common import diagnostics, evaluate

# The fields of each epoch's entry in the history.
HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "seconds",
)


def default_config() -> ml_collections.ConfigDict:
    """SGD with momentum on the 8x8 digits, GC on: the CNN examples' defaults.

    Returns:
        A ``ConfigDict`` with the fields below (the examples' READMEs list
        them).

    Example:
        >>> config = default_config()
        >>> config.dataset, config.optimizer, config.gc
        ('digits', 'sgd', True)
    """
    config = ml_collections.ConfigDict()
    # Data: "digits" (bundled with scikit-learn), "fashion_mnist" or "mnist"
    # (IDX files: see examples/datasets.py for where they are looked for).
    config.dataset = "digits"
    config.data_dir = config_dict.placeholder(str)
    config.download = True
    # Train on the first train_limit images only, test on the first test_limit
    # (None: all); for quick runs and the tests.
    config.train_limit = config_dict.placeholder(int)
    config.test_limit = config_dict.placeholder(int)

    # "sgd" (with `momentum`; 0 for plain SGD), "rmsprop" or "adam".
    config.optimizer = "sgd"
    config.learning_rate = 0.05
    config.momentum = 0.9
    # Gradient Centralization ahead of the optimizer, on every kernel or, with
    # conv_only, only on the conv kernels (the paper's GCC).
    config.gc = True
    config.conv_only = False

    config.dropout_rate = 0.5
    config.batch_size = 64
    config.eval_batch_size = 1000
    config.num_epochs = 10
    config.seed = 0
    return config


def load_data(config: ml_collections.ConfigDict) -> datasets.Dataset:
    """The dataset named by the config, cut to ``train_limit``/``test_limit``."""
    data = datasets.load(
        config.dataset, data_dir=config.data_dir, download=config.download
    )
    train, test = slice(config.train_limit), slice(config.test_limit)
    return data._replace(
        train_images=data.train_images[train],
        train_labels=data.train_labels[train],
        test_images=data.test_images[test],
        test_labels=data.test_labels[test],
    )


class Framework(NamedTuple):
    """What differs between the NNX and the linen loop.

    Attributes:
      init: ``init(config, data) -> state``: the model and optimizer, from
        ``config.seed``.
      train_step: ``train_step(state, images, labels) -> (state, loss,
        accuracy)``, with dropout.
      eval_step: ``eval_step(state, images, labels, weights) -> (loss sum,
        hits)``, without dropout (see :func:`evaluate.weighted_sums`).
      params: ``params(state)``: the parameters as a nested dict.
    """

    init: Callable[[ml_collections.ConfigDict, datasets.Dataset], Any]
    train_step: Callable[[Any, np.ndarray, np.ndarray], tuple[Any, Any, Any]]
    eval_step: Callable[..., tuple[Any, Any]]
    params: Callable[[Any], optax.Params]


def make_train_and_evaluate(
    framework: Framework,
) -> Callable[[ml_collections.ConfigDict, str], dict]:
    """The example's ``train_and_evaluate(config, workdir)``, run by ``framework``."""

    def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
        """Trains, evaluates after every epoch, and writes ``workdir/metrics.json``.

        Each epoch visits the training set in a fresh permutation drawn from
        ``np.random.default_rng(config.seed)`` and drops the ragged last batch
        (one batch shape: one compilation). Training metrics are averaged over
        the epoch's steps, with dropout on; test metrics are measured after the
        epoch with dropout off.

        Args:
            config: Hyperparameters, as in :func:`default_config`.
            workdir: Directory for ``metrics.json`` (created if need be).

        Returns:
            A JSON-ready dict: ``history`` (one dict per epoch: ``epoch``,
            ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
            ``seconds``), the last epoch's metrics at the top level,
            ``fan_in_sum_change`` (per kernel GC could touch, the largest change
            of an output unit's fan-in weight sum; see
            :func:`diagnostics.kernel_changes`), ``gc_kernels`` (the kernels GC
            touched under this config), the dataset's ``dataset``, ``source``,
            ``num_train`` and ``num_test``, ``seconds`` in all and the ``config``.

        Raises:
            ValueError: If the batch size exceeds the training set.
        """
        return _train_and_evaluate(config, workdir, framework)

    return train_and_evaluate


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, framework: Framework
) -> dict:
    """The loop of the function :func:`make_train_and_evaluate` returns."""
    start = time.perf_counter()
    data = load_data(config)
    num_train = len(data.train_labels)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.batch_size {config.batch_size} exceeds the {num_train} "
            f"training images of {config.dataset}; lower it."
        )
    logging.info(
        "%s from %s: %d train, %d test images of shape %s; %d steps per epoch.",
        data.name,
        data.source,
        num_train,
        len(data.test_labels),
        data.train_images.shape[1:],
        steps_per_epoch,
    )

    state = framework.init(config, data)
    params0 = framework.params(state)
    test_batches = evaluate.padded_batches(
        data.test_images, data.test_labels, config.eval_batch_size
    )
    rng = np.random.default_rng(config.seed)
    history = []
    for epoch in range(1, config.num_epochs + 1):
        epoch_start = time.perf_counter()
        perm = rng.permutation(num_train)
        step_metrics = []
        for step in range(steps_per_epoch):
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            state, loss, accuracy = framework.train_step(
                state, data.train_images[idx], data.train_labels[idx]
            )
            step_metrics.append((loss, accuracy))
        # One transfer per epoch: the steps' (loss, accuracy) pairs, stacked.
        train_loss, train_accuracy = np.asarray(jnp.array(step_metrics)).mean(0)
        test = evaluate.evaluate(
            functools.partial(framework.eval_step, state), test_batches
        )
        history.append(
            {
                "epoch": epoch,
                "train_loss": float(train_loss),
                "train_accuracy": float(train_accuracy),
                "test_loss": test["loss"],
                "test_accuracy": test["accuracy"],
                "seconds": time.perf_counter() - epoch_start,
            }
        )
        logging.info(
            "epoch %d: train loss %.4f, accuracy %.4f; test loss %.4f, "
            "accuracy %.4f (%.1f s)",
            *(history[-1][k] for k in HISTORY_KEYS),
        )

    # Every kernel the rank rule gives axes, so that with conv_only the Dense
    # kernels' sums show they were left alone.
    kernels = diagnostics.gc_axes(params0)
    changes = diagnostics.kernel_changes(params0, framework.params(state), kernels)
    result = {
        **{k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")},
        "fan_in_sum_change": changes["fan_in_sum"],
        "gc_kernels": list(diagnostics.gc_axes(params0, conv_only=config.conv_only))
        if config.gc
        else [],
        "history": history,
        "dataset": data.name,
        "source": data.source,
        "num_train": num_train,
        "num_test": len(data.test_labels),
        "seconds": time.perf_counter() - start,
        "config": config.to_dict(),
    }
    logging.info(
        "Largest change of an output unit's fan-in weight sum, per kernel (about "
        "1e-6 with GC and SGD, far larger without GC or with RMSprop/Adam): %s",
        ", ".join(f"{k} {v:.1e}" for k, v in result["fan_in_sum_change"].items()),
    )
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result
