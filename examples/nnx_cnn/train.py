"""Trains the article's CNN with Flax NNX, with or without Gradient Centralization.

The optimizer is ``optax.chain(optax_gc.centralize(), <optimizer>)`` when
``config.gc`` is on, else ``<optimizer>`` alone (``examples/common/optim.py``),
held by an ``nnx.Optimizer``; the whole train step (forward, backward, GC and
the optimizer update) is one ``nnx.jit``-compiled function. This file is the
NNX part; the loop, the data and the fan-in check, the same for the linen
example, are in ``examples/common/cnn.py``.
"""

from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx
from jax.typing import ArrayLike

from examples import datasets
from examples.common import cnn, evaluate, optim
from examples.nnx_cnn import models

State = tuple[models.CNN, nnx.Optimizer]


def create_state(config: ml_collections.ConfigDict, data: datasets.Dataset) -> State:
    """The model, initialised from ``nnx.Rngs(config.seed)``, and its optimizer."""
    model = models.CNN(
        data.train_images.shape[1:],
        data.num_classes,
        dropout_rate=config.dropout_rate,
        rngs=nnx.Rngs(config.seed),
    )
    return model, nnx.Optimizer(model, optim.create_optimizer(config), wrt=nnx.Param)


def loss_and_logits(
    model: models.CNN, images: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy, and the logits."""
    logits = model(images)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, logits


@nnx.jit
def train_step(
    model: models.CNN,
    optimizer: nnx.Optimizer,
    images: ArrayLike,
    labels: ArrayLike,
) -> tuple[jax.Array, jax.Array]:
    """One optimizer step on a batch, dropout on; returns its loss and accuracy."""
    grad_fn = nnx.value_and_grad(loss_and_logits, has_aux=True)
    (loss, logits), grads = grad_fn(model, images, labels)
    optimizer.update(model, grads)
    return loss, (logits.argmax(-1) == labels).mean()


@nnx.jit
def eval_step(
    model: models.CNN, images: ArrayLike, labels: ArrayLike, weights: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Summed loss and number correct over the examples with weight 1, no dropout."""
    logits = nnx.view(model, deterministic=True)(images)
    return evaluate.weighted_sums(logits, labels, weights)


def _train_step(state: State, images: ArrayLike, labels: ArrayLike):
    loss, accuracy = train_step(*state, images, labels)
    return state, loss, accuracy  # the model and optimizer, updated in place


train_and_evaluate = cnn.make_train_and_evaluate(
    cnn.Framework(
        init=create_state,
        train_step=_train_step,
        eval_step=lambda state, *batch: eval_step(state[0], *batch),
        params=lambda state: nnx.to_pure_dict(nnx.state(state[0], nnx.Param)),
    )
)
