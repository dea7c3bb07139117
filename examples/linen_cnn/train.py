"""Trains the article's CNN with Flax linen, with or without Gradient Centralization.

The optimizer is ``optax.chain(optax_gc.centralize(), <optimizer>)`` when
``config.gc`` is on, else ``<optimizer>`` alone, held in a
``flax.training.train_state.TrainState``; the whole train step (forward,
backward, GC and the optimizer update) is one ``jax.jit``-compiled function.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.typing import ArrayLike

import optax_gc
from examples import datasets
from examples.linen_cnn import models

# The fields of each epoch's entry in the history.
HISTORY_KEYS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "seconds",
)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The base optimizer, with Gradient Centralization ahead of it if ``config.gc``.

    Args:
        config: Reads ``optimizer`` (``"sgd"``, ``"rmsprop"`` or ``"adam"``),
            ``learning_rate``, ``momentum`` (SGD only; 0 for plain SGD),
            ``gc`` and ``conv_only``.

    Returns:
        The optax transformation.

    Raises:
        ValueError: For an unknown ``config.optimizer``.

    Example:
        >>> from examples.linen_cnn.configs import default
        >>> tx = create_optimizer(default.get_config())
    """
    lr = config.learning_rate
    if config.optimizer == "sgd":
        tx = optax.sgd(lr, momentum=config.momentum or None)
    elif config.optimizer == "rmsprop":
        tx = optax.rmsprop(lr)
    elif config.optimizer == "adam":
        tx = optax.adam(lr)
    else:
        raise ValueError(
            f"config.optimizer is {config.optimizer!r}; use 'sgd', 'rmsprop' or 'adam'."
        )
    if not config.gc:
        return tx
    return optax.chain(optax_gc.centralize(conv_only=config.conv_only), tx)


def create_train_state(
    model: models.CNN,
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    key: jax.Array,
) -> train_state.TrainState:
    """Initializes the parameters from ``key`` and wraps them with the optimizer."""
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init(key, dummy, train=False)["params"]
    return train_state.TrainState.create(
        apply_fn=model.apply, params=params, tx=create_optimizer(config)
    )


@jax.jit
def train_step(
    state: train_state.TrainState,
    images: ArrayLike,
    labels: ArrayLike,
    dropout_key: jax.Array,
) -> tuple[train_state.TrainState, jax.Array, jax.Array]:
    """One optimizer step on a batch; returns the new state, loss and accuracy.

    Each step's dropout mask comes from ``dropout_key`` folded with the step
    number, so one key serves the whole run.
    """
    step_key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params: optax.Params) -> tuple[jax.Array, jax.Array]:
        logits = state.apply_fn(
            {"params": params}, images, train=True, rngs={"dropout": step_key}
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return loss.mean(), logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, loss, (logits.argmax(-1) == labels).mean()


@jax.jit
def eval_step(
    state: train_state.TrainState,
    images: ArrayLike,
    labels: ArrayLike,
    weights: ArrayLike,
) -> tuple[jax.Array, jax.Array]:
    """Summed loss and number correct over the examples with weight 1."""
    logits = state.apply_fn({"params": state.params}, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (logits.argmax(-1) == labels).astype(jnp.float32)
    return (losses * weights).sum(), (correct * weights).sum()


def evaluate(
    state: train_state.TrainState,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
) -> dict[str, float]:
    """Loss and accuracy over a whole set, dropout off, in batches of one shape.

    The last batch is padded with zero-weight examples, so ``eval_step``
    compiles once.
    """
    batch_size = min(batch_size, len(labels))
    loss_sum = correct = 0.0
    for start in range(0, len(labels), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(y)
        weights = np.concatenate([np.ones(len(y)), np.zeros(pad)]).astype(np.float32)
        x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        batch_loss, batch_correct = eval_step(state, x, y, weights)
        loss_sum += float(batch_loss)
        correct += float(batch_correct)
    return {"loss": loss_sum / len(labels), "accuracy": correct / len(labels)}


def kernels(params: optax.Params) -> dict[str, np.ndarray]:
    """Every kernel, by layer name, in float64 (so differences are exact)."""
    return {
        name: np.asarray(layer["kernel"], np.float64)
        for name, layer in params.items()
        if "kernel" in layer
    }


def fan_in_sum_change(
    before: dict[str, np.ndarray], after: dict[str, np.ndarray]
) -> dict[str, float]:
    """Per kernel, the largest change of any output unit's fan-in weight sum.

    Flax kernels are ``(..., in, out)``: the fan-in is every axis but the
    last. Gradient Centralization with SGD (with or without momentum, no
    weight decay) keeps these sums where they started, up to float32
    rounding; adaptive optimizers (RMSprop, Adam) rescale each coordinate of
    the centralized gradient, so under them the sums move even with GC.
    """
    out = {}
    for name, w0 in before.items():
        change = after[name] - w0
        out[name] = float(np.abs(change.sum(axis=tuple(range(change.ndim - 1)))).max())
    return out


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains, evaluates after every epoch, and writes ``workdir/metrics.json``.

    Each epoch visits the training set in a fresh permutation drawn from
    ``np.random.default_rng(config.seed)`` and drops the ragged last batch
    (one batch shape: one compilation). Training metrics are averaged over
    the epoch's steps, with dropout on; test metrics are measured after the
    epoch with dropout off.

    Args:
        config: Hyperparameters, as in ``configs/default.py``.
        workdir: Directory for ``metrics.json`` (created if need be).

    Returns:
        A JSON-ready dict: ``history`` (one dict per epoch: ``epoch``,
        ``train_loss``, ``train_accuracy``, ``test_loss``, ``test_accuracy``,
        ``seconds``), the last epoch's metrics at the top level,
        ``fan_in_sum_change`` (see :func:`fan_in_sum_change`), the dataset's
        ``dataset``, ``source``, ``num_train`` and ``num_test``,
        ``seconds`` in all and the ``config``.

    Raises:
        ValueError: If the batch size exceeds the training set.
    """
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

    model = models.CNN(num_classes=data.num_classes, dropout_rate=config.dropout_rate)
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed))
    state = create_train_state(model, config, data.train_images.shape[1:], init_key)
    initial_kernels = kernels(state.params)
    rng = np.random.default_rng(config.seed)
    history = []
    for epoch in range(1, config.num_epochs + 1):
        epoch_start = time.perf_counter()
        perm = rng.permutation(num_train)
        step_metrics = []
        for step in range(steps_per_epoch):
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            state, loss, accuracy = train_step(
                state, data.train_images[idx], data.train_labels[idx], dropout_key
            )
            step_metrics.append((loss, accuracy))
        # One transfer per epoch: the steps' (loss, accuracy) pairs, stacked.
        train_loss, train_accuracy = np.asarray(jnp.array(step_metrics)).mean(0)
        test = evaluate(
            state, data.test_images, data.test_labels, batch_size=config.eval_batch_size
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

    result = {
        **{k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")},
        "fan_in_sum_change": fan_in_sum_change(initial_kernels, kernels(state.params)),
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
