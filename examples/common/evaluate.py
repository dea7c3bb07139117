"""Held-out evaluation in padded batches of one shape: one compilation.

Every example evaluates a whole set with a jitted step over equal batches:
the last batch is padded with zero-weight rows, and the step returns weighted
sums, so padding never counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Batch = tuple[Any, Any, Any]


def pad(
    images: np.ndarray, labels: np.ndarray, multiple: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The set zero-padded to a multiple of ``multiple`` rows, and row weights.

    Weights are 1 for the set's rows and 0 for the padding.

    Example:
      >>> x, y, w = pad(np.ones((3, 2)), np.arange(3), 4)
      >>> x.shape, y.tolist(), w.tolist()
      ((4, 2), [0, 1, 2, 0], [1.0, 1.0, 1.0, 0.0])
    """
    n = len(labels)
    extra = -n % multiple
    return (
        np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)]),
        np.concatenate([labels, np.zeros(extra, labels.dtype)]),
        np.concatenate([np.ones(n, np.float32), np.zeros(extra, np.float32)]),
    )


def padded_batches(
    images: np.ndarray, labels: np.ndarray, batch_size: int, *, multiple: int = 1
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The whole set in equal batches ``(images, labels, weights)``.

    Args:
      images: the set's images.
      labels: their labels.
      batch_size: the batch size, cut to the set's size.
      multiple: the batch size is rounded up to a multiple of it (the number
        of devices a batch is split over).

    Returns:
      The batches; the last one is zero-padded, with weight 0 on the padding.

    Example:
      >>> [len(w) for _, _, w in padded_batches(np.ones((5, 2)), np.arange(5), 2)]
      [2, 2, 2]
    """
    batch = -(-min(batch_size, len(labels)) // multiple) * multiple
    x, y, w = pad(images, labels, batch)
    return [
        (x[i : i + batch], y[i : i + batch], w[i : i + batch])
        for i in range(0, len(y), batch)
    ]


def weighted_sums(
    logits: jax.Array, labels: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed cross-entropy and number correct over the rows of weight 1."""
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(loss * weights), jnp.sum(hit * weights)


def evaluate(
    eval_step: Callable[..., tuple[jax.Array, jax.Array]], batches: Sequence[Batch]
) -> dict[str, float]:
    """Mean loss and accuracy over the batches.

    Args:
      eval_step: ``eval_step(images, labels, weights) -> (loss sum, hits)``,
        such as :func:`weighted_sums` of the model's logits.
      batches: from :func:`padded_batches` (on the host or a device).

    Returns:
      ``loss`` and ``accuracy``, over the rows of weight 1. One transfer from
      the device for the whole set.

    Example:
      >>> def eval_step(x, y, w):
      ...     return weighted_sums(jnp.stack([x, -x], 1), y, w)
      >>> batches = padded_batches(np.ones(3, np.float32), np.array([0, 0, 1]), 2)
      >>> round(evaluate(eval_step, batches)["accuracy"], 4)
      0.6667
    """
    sums = [eval_step(*batch) for batch in batches]
    loss, hits = np.sum(jax.device_get(sums), axis=0)
    count = sum(float(np.sum(w)) for _, _, w in batches)
    return {"loss": float(loss) / count, "accuracy": float(hits) / count}
