"""Which axes of which leaf are "fan-in": the layout rules and axis specs.

Everything that decides *where* gradient centralization averages lives here;
``_centralize.py`` only does the arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np
import optax

Layout: TypeAlias = Literal["channels_last", "channels_first"]
"""Where a kernel keeps its output axis: last (Flax, Haiku, Keras) or first
(PyTorch, Equinox)."""

Axes: TypeAlias = tuple[int, ...] | None
"""The reduction axes of one leaf: a tuple of axes, or ``None`` to leave the
leaf alone."""

ReductionAxes: TypeAlias = Any | Callable[[optax.Updates], Any]
"""A tree of :data:`Axes` matching the params (or a prefix of it), or a
callable that returns such a tree given the updates."""

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


def layout_axes(ndim: int, *, layout: Layout, conv_only: bool) -> Axes:
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

    def axes_of(leaf: Any) -> Axes:
        if not is_centralizable(leaf):
            return None
        return layout_axes(len(leaf.shape), layout=layout, conv_only=conv_only)

    return jax.tree.map(axes_of, params)


def is_axes_spec(x: Any) -> bool:
    """A leaf of a reduction-axes tree: ``None``, an int or a tuple of ints."""
    if x is None or _is_int(x):
        return True
    return isinstance(x, tuple) and all(_is_int(a) for a in x)


def _is_int(a: Any) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def normalize_axes(
    spec: int | Sequence[int], shape: tuple[int, ...], path: str
) -> tuple[int, ...]:
    """Checks a leaf's axes against its shape; returns them sorted, >= 0."""
    if isinstance(spec, (int, np.integer)):
        axes: tuple[int, ...] = (int(spec),)
    else:
        axes = tuple(int(a) for a in spec)
    ndim = len(shape)
    if not axes:
        raise ValueError(
            f"reduction_axes gives an empty tuple for leaf {path} of shape "
            f"{shape}. A mean over no axes would zero the gradient; use None "
            "to leave this leaf alone."
        )
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"Reduction axis {a} is out of range for leaf {path} of shape "
                f"{shape} (rank {ndim}). Give axes in [{-ndim}, {ndim - 1}], "
                "or None to leave this leaf alone."
            )
    normalized = tuple(sorted(a % ndim for a in axes))
    if len(set(normalized)) != len(normalized):
        raise ValueError(
            f"reduction_axes {axes} for leaf {path} of shape {shape} names an "
            "axis twice. Give each fan-in axis once."
        )
    return normalized


def is_void(x: Any) -> bool:
    """A position of the updates with no array: ``None`` or a MaskedNode."""
    return x is None or isinstance(x, optax.MaskedNode)


def match_leaves(
    spec: Any,
    flat_tree: list[tuple[tuple, Any]],
    *,
    name: str,
    is_leaf: Callable[[Any], bool],
) -> list[tuple[tuple | None, Any]]:
    """The ``spec`` entry that governs each leaf of ``flat_tree``.

    ``spec`` may be a prefix of the tree (one value for a whole subtree) and
    may go on below a ``None``/MaskedNode of the tree (as it does inside
    :func:`optax.masked`). Matching is by key path, so a plain dict spec fits
    an ``nnx.State`` tree with the same keys.

    Args:
      spec: the user's tree of values (axes, or mask bools).
      flat_tree: the updates as ``(key_path, leaf)`` pairs, flattened with
        :func:`is_void` leaves.
      name: the option's name, for error messages.
      is_leaf: what counts as one value of ``spec``.

    Returns:
      For each leaf of ``flat_tree``, the key path of its governing entry in
      ``spec`` (the leaf's own path, or a prefix of it) and that entry's
      value; ``(None, None)`` for a void leaf that ``spec`` does not reach.

    Raises:
      ValueError: naming the first key path where the two trees disagree.
    """
    keystr = jax.tree_util.keystr
    by_path = dict(jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_leaf)[0])
    leaves = dict(flat_tree)
    fix = (
        f"Give {name} the same structure as the params (or a prefix of it), "
        "or a callable that builds it from them."
    )
    on_a_path = {p[:k] for p in leaves for k in range(len(p) + 1)}
    for q in by_path:
        if q in on_a_path:
            continue
        above = [q[:k] for k in range(len(q)) if q[:k] in leaves]
        if above and is_void(leaves[above[0]]):
            continue
        if above:
            shape = getattr(leaves[above[0]], "shape", None)
            raise ValueError(
                f"The {name} tree does not match the params: it has an entry "
                f"at {keystr(q)}, inside leaf {keystr(above[0])} of shape "
                f"{shape}. {fix}"
            )
        raise ValueError(
            f"The {name} tree does not match the params: it has an entry at "
            f"{keystr(q)}, which is not in the params. {fix}"
        )
    values: list[tuple[tuple | None, Any]] = []
    for p, leaf in flat_tree:
        governing = [p[:k] for k in range(len(p) + 1) if p[:k] in by_path]
        if governing:
            values.append((governing[0], by_path[governing[0]]))
        elif is_void(leaf):
            values.append((None, None))
        else:
            raise ValueError(
                f"The {name} tree does not match the params: it has no entry "
                f"for leaf {keystr(p)} of shape {getattr(leaf, 'shape', None)}. "
                f"{fix}"
            )
    return values
