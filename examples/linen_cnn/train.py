"""Trains the article's CNN with Flax linen, with or without Gradient Centralization.

The optimizer is ``optax.chain(optax_gc.centralize(), <optimizer>)`` when
``config.gc`` is on, else ``<optimizer>`` alone (``examples/common/optim.py``),
held in a ``flax.training.train_state.TrainState``; the whole train step
(forward, backward, GC and the optimizer update) is one ``jax.jit``-compiled
function. This file is the linen part; the loop, the data and the fan-in
check, the same for the NNX example, are in ``examples/common/cnn.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax.typing import ArrayLike

from examples import datasets
from examples.common import cnn, evaluate, optim
from examples.linen_cnn import models


class TrainState(train_state.TrainState):
    """A ``TrainState`` that also holds the run's dropout key."""

    dropout_key: jax.Array


def create_train_state(
    model: models.CNN,
    config: ml_collections.ConfigDict,
    image_shape: tuple[int, ...],
    key: jax.Array,
) -> TrainState:
    """Initializes the parameters and the dropout key from ``key``."""
    init_key, dropout_key = jax.random.split(key)
    dummy = jnp.zeros((1, *image_shape), jnp.float32)
    params = model.init(init_key, dummy, train=False)["params"]
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optim.create_optimizer(config),
        dropout_key=dropout_key,
    )


def create_state(
    config: ml_collections.ConfigDict, data: datasets.Dataset
) -> TrainState:
    """The train state of the example's CNN, from ``config.seed``."""
    model = models.CNN(num_classes=data.num_classes, dropout_rate=config.dropout_rate)
    image_shape = data.train_images.shape[1:]
    return create_train_state(model, config, image_shape, jax.random.key(config.seed))


@jax.jit
def train_step(
    state: TrainState, images: ArrayLike, labels: ArrayLike
) -> tuple[TrainState, jax.Array, jax.Array]:
    """One optimizer step on a batch; returns the new state, loss and accuracy.

    Each step's dropout mask comes from the state's dropout key folded with
    the step number, so one key serves the whole run.
    """
    step_key = jax.random.fold_in(state.dropout_key, state.step)

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
    state: TrainState, images: ArrayLike, labels: ArrayLike, weights: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    """Summed loss and number correct over the examples with weight 1, no dropout."""
    logits = state.apply_fn({"params": state.params}, images, train=False)
    return evaluate.weighted_sums(logits, labels, weights)


train_and_evaluate = cnn.make_train_and_evaluate(
    cnn.Framework(
        init=create_state,
        train_step=train_step,
        eval_step=eval_step,
        params=lambda state: state.params,
    )
)
