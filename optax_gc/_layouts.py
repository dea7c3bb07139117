"""The layout rules: which axes of a kernel are "fan-in", from its rank.

What a leaf may be (:func:`is_centralizable`), the two layout rules
(:func:`layout_axes`, :func:`rank_rule_axes`) and their tree form
(:func:`default_reduction_axes`). How a user's own axes and masks are read
and checked is in ``_options.py``; ``_centralize.py`` does the arithmetic.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

Layout: TypeAlias = Literal["channels_last", "channels_first"]
"""Where a kernel keeps its output axis: last (Flax, Haiku, Keras) or first
(PyTorch, Equinox)."""

Axes: TypeAlias = tuple[int, ...] | int | None
"""The reduction axes of one leaf: a tuple of axes (an int is one axis), or
``None`` to leave the leaf alone."""

ReductionAxes: TypeAlias = Any
"""A tree of :data:`Axes` matching the params (or a prefix of it), or a
callable that returns such a tree given the updates. (``Any``: a pytree of
axes cannot be typed more precisely.)"""

LAYOUTS: tuple[str, ...] = ("channels_last", "channels_first")

_LAYOUT_HELP = {
    "channels_last": "Flax linen/nnx, Haiku and Keras kernels: (in, out), "
    "(kh, kw, in, out)",
    "channels_first": "PyTorch and Equinox kernels: (out, in), (out, in, kh, kw)",
}


def check_layout(layout: str) -> None:
    """Raises a ValueError naming the valid layouts if ``layout`` is not one."""
    if layout not in LAYOUTS:
        choices = "; ".join(f"{k!r} for {v}" for k, v in _LAYOUT_HELP.items())
        raise ValueError(f"Unknown layout {layout!r}. Use {choices}.")


def is_centralizable(x: Any) -> bool:
    """Whether GC may touch this leaf: a non-empty floating/complex array.

    Integer, bool and ``float0`` arrays, Python scalars and zero-size arrays
    are never centralized, whatever the axes say.
    """
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None or len(shape) == 0:
        return False
    return bool(jnp.issubdtype(dtype, jnp.inexact)) and int(np.prod(shape)) > 0


def fan_in_size(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    """M, the number of entries each output unit averages over."""
    return math.prod(shape[a] for a in axes)


def layout_axes(
    ndim: int, *, layout: Layout, conv_only: bool
) -> tuple[int, ...] | None:
    """The fan-in axes of a kernel of rank ``ndim`` under a layout rule.

    Rank 0 and 1 leaves (biases, norm scales) get ``None``; with ``conv_only``
    so does everything of rank 3 or less (the paper's GCC variant).
    """
    if ndim < 2 or (conv_only and ndim <= 3):
        return None
    if layout == "channels_last":
        return tuple(range(ndim - 1))
    return tuple(range(1, ndim))


def default_reduction_axes(
    params: optax.Params,
    *,
    layout: Layout = "channels_last",
    conv_only: bool = False,
) -> Any:
    """The reduction axes :func:`optax_gc.centralize` uses when given none.

    Useful as a starting point to edit by hand, and to see what a layout rule
    will do to a parameter tree before training with it.

    Args:
      params: a tree of arrays (or of ``jax.ShapeDtypeStruct``).
      layout: ``"channels_last"`` (Flax, Haiku, Keras: average every axis but
        the last) or ``"channels_first"`` (PyTorch, Equinox: every axis but the
        first).
      conv_only: only leaves of rank > 3 (conv kernels) get axes.

    Returns:
      A tree like ``params`` whose leaves are a tuple of axes or ``None``.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"conv": {"kernel": jnp.zeros((3, 3, 1, 8)),
      ...                    "bias": jnp.zeros(8)},
      ...           "dense": {"kernel": jnp.zeros((32, 10))}}
      >>> optax_gc.default_reduction_axes(params)
      {'conv': {'bias': None, 'kernel': (0, 1, 2)}, 'dense': {'kernel': (0,)}}
      >>> optax_gc.default_reduction_axes(params, layout="channels_first",
      ...                                 conv_only=True)
      {'conv': {'bias': None, 'kernel': (1, 2, 3)}, 'dense': {'kernel': None}}
    """
    check_layout(layout)
    return jax.tree.map(
        lambda leaf: rank_rule_axes(leaf, layout=layout, conv_only=conv_only), params
    )


def rank_rule_axes(
    leaf: Any, *, layout: Layout = "channels_last", conv_only: bool = False
) -> tuple[int, ...] | None:
    """One leaf's axes under a layout rule, or ``None`` where GC leaves it.

    ``None`` for leaves GC never touches (see :func:`is_centralizable`), for
    rank 0 and 1, for rank <= 3 with ``conv_only``, and for a fan-in of one
    entry per unit (GC would zero that gradient).
    """
    if not is_centralizable(leaf):
        return None
    axes = layout_axes(len(leaf.shape), layout=layout, conv_only=conv_only)
    if axes is None or fan_in_size(leaf.shape, axes) == 1:
        return None
    return axes
