"""The examples' optimizers: one constructor, GC ahead of it when asked."""

from __future__ import annotations

import ml_collections
import optax
from jax.typing import ArrayLike

import optax_gc

OPTIMIZERS = ("sgd", "rmsprop", "adam")


def base_optimizer(
    name: str, learning_rate: ArrayLike, *, momentum: float = 0.0
) -> optax.GradientTransformation:
    """The plain optax optimizer ``name``, without GC.

    Args:
      name: ``"sgd"`` (with ``momentum``; 0 for plain SGD), ``"rmsprop"`` or
        ``"adam"``.
      learning_rate: its learning rate.
      momentum: SGD's momentum; the others ignore it.

    Returns:
      ``optax.sgd(learning_rate, momentum=momentum or None)``,
      ``optax.rmsprop(learning_rate)`` or ``optax.adam(learning_rate)``.

    Raises:
      ValueError: for another ``name``.

    Example:
      >>> tx = base_optimizer("sgd", 0.1, momentum=0.9)
    """
    if name == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None)
    if name == "rmsprop":
        return optax.rmsprop(learning_rate)
    if name == "adam":
        return optax.adam(learning_rate)
    raise ValueError(f"optimizer is {name!r}; use 'sgd', 'rmsprop' or 'adam'.")


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The configured optimizer, with ``optax_gc.centralize()`` ahead if ``gc``.

    Args:
      config: reads ``optimizer``, ``learning_rate``, ``momentum``, ``gc`` and
        ``conv_only`` (GC on conv kernels only, the paper's GCC).

    Returns:
      ``optax.chain(optax_gc.centralize(conv_only=...), optimizer)``, or the
      optimizer alone when ``config.gc`` is off.

    Raises:
      ValueError: for an unknown ``config.optimizer``, naming the field.

    Example:
      >>> config = ml_collections.ConfigDict(
      ...     dict(optimizer="adam", learning_rate=1e-3, momentum=0.0,
      ...          gc=True, conv_only=False))
      >>> tx = create_optimizer(config)
    """
    try:
        tx = base_optimizer(
            config.optimizer, config.learning_rate, momentum=config.momentum
        )
    except ValueError as e:
        raise ValueError(f"config.{e}") from None
    if not config.gc:
        return tx
    return optax.chain(optax_gc.centralize(conv_only=config.conv_only), tx)
