"""Which axes of which leaf are "fan-in": the layout rules and axis specs.

Everything that decides *where* gradient centralization averages lives here;
``_centralize.py`` only does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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

    def axes_of(leaf: Any) -> Axes:
        if not is_centralizable(leaf):
            return None
        axes = layout_axes(len(leaf.shape), layout=layout, conv_only=conv_only)
        if axes is None or fan_in_size(leaf.shape, axes) == 1:
            return None
        return axes

    return jax.tree.map(axes_of, params)


def is_axes_spec(x: Any) -> bool:
    """One value of a reduction-axes tree: ``None``, a number or a tuple of them.

    Numbers that are not ints (bools, floats) are taken as values here so that
    :func:`normalize_axes` can refuse them with a message naming the leaf.
    """
    if x is None or _is_number(x):
        return True
    return isinstance(x, tuple) and all(_is_number(a) for a in x)


def _is_number(a: Any) -> bool:
    # Arrays (and tracers) too, so that a traced axis reaches normalize_axes
    # and is refused there with a message, instead of being taken for a tree.
    return isinstance(a, (int, float, np.number, np.bool_, jax.Array))


def _is_int(a: Any) -> bool:
    return isinstance(a, (int, np.integer)) and not isinstance(a, (bool, np.bool_))


def keyname(path: tuple) -> str:
    """A key path as text, e.g. ``['dense']['kernel']``; the root has none."""
    return jax.tree_util.keystr(path) or "<the root>"


def normalize_axes(spec: Any, shape: tuple[int, ...], path: str) -> tuple[int, ...]:
    """Checks a leaf's axes against its shape; returns them sorted, >= 0.

    Raises:
      ValueError: naming ``path`` and ``shape``, for anything but an int or a
        tuple of ints, for an axis out of range, an empty tuple or a repeat.
    """
    where = f"leaf {path} of shape {shape}"
    valid = _is_int(spec) or (isinstance(spec, tuple) and all(_is_int(a) for a in spec))
    if not valid:
        hint = ""
        if isinstance(spec, (bool, np.bool_)):
            hint = " A tree of bools is a mask: pass it as mask=."
        elif isinstance(spec, list):
            hint = " Use a tuple, not a list."
        elif isinstance(spec, jax.Array) or (
            isinstance(spec, tuple) and any(isinstance(a, jax.Array) for a in spec)
        ):
            hint = (
                " Axes must be static Python ints: with optax.inject_hyperparams,"
                " list reduction_axes in static_args."
            )
        raise ValueError(
            f"reduction_axes for {where} must be a tuple of int axes or None, "
            f"got {spec!r}.{hint}"
        )
    axes = (int(spec),) if _is_int(spec) else tuple(int(a) for a in spec)
    ndim = len(shape)
    if not axes:
        raise ValueError(
            f"reduction_axes gives an empty tuple for {where}. A mean over no "
            "axes would zero the gradient; use None to leave this leaf alone."
        )
    if ndim == 0:
        raise ValueError(
            f"reduction_axes gives the axes {axes} to {where}, a scalar with no "
            "axes. Use None to leave it alone."
        )
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(
                f"Reduction axis {a} is out of range for {where} (rank {ndim}). "
                f"Give axes in [{-ndim}, {ndim - 1}], or None to leave this "
                "leaf alone."
            )
    normalized = tuple(sorted(a % ndim for a in axes))
    if len(set(normalized)) != len(normalized):
        raise ValueError(
            f"reduction_axes {axes} for {where} names an axis twice. Give each "
            "fan-in axis once."
        )
    return normalized


def is_void(x: Any) -> bool:
    """A position of the updates with no array: None, a MaskedNode, or ``{}``."""
    return x is None or not jax.tree.leaves(x)


def is_function(x: Any, *, is_leaf: Callable[[Any], bool]) -> bool:
    """Whether an option is a function of the params rather than a tree.

    As for :func:`optax.masked`: a callable pytree (an Equinox module) whose
    leaves are values is a tree, not a function.
    """
    leaves = jax.tree.leaves(x, is_leaf=is_leaf)
    return bool(leaves) and all(callable(leaf) for leaf in leaves)


def _node_at(tree: Any, path: tuple) -> Any:
    """The node of ``tree`` at ``path``, for dict, sequence and attribute keys."""
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            tree = tree[k.key]
        elif isinstance(k, jax.tree_util.SequenceKey):
            tree = tree[k.idx]
        elif isinstance(k, jax.tree_util.GetAttrKey):
            tree = getattr(tree, k.name)
        else:
            return None
    return tree


def _is_box_path(keys: tuple) -> bool:
    """Whether a key path suffix only reads attributes (``.value``): a box."""
    return all(isinstance(k, jax.tree_util.GetAttrKey) for k in keys)


def is_boxed_in(entry: tuple, path: tuple) -> bool:
    """Whether a spec entry and a leaf are the same place, up to a box.

    True when one key path extends the other by attribute reads only (an
    ``nnx.Variable``'s ``.value``, on either side).
    """
    short, long = sorted((entry, path), key=len)
    return long[: len(short)] == short and _is_box_path(long[len(short) :])


def _match_leaves(
    spec: Any,
    flat_tree: list[tuple[tuple, Any]],
    *,
    name: str,
    is_leaf: Callable[[Any], bool],
) -> list[tuple[tuple | None, Any]]:
    """The ``spec`` entry that governs each leaf of ``flat_tree``.

    Matching is by key path, not by node type, so a plain dict spec fits an
    ``nnx.State`` with the same keys. An entry governs every leaf below it
    (``spec`` may be a prefix of the tree), and an attribute box that holds
    exactly one entry or one array, such as an ``nnx.Variable`` (key path
    ``['kernel'].value``), is seen through on either side. Entries below a
    ``None`` or ``MaskedNode`` of the tree are ignored, as they must be
    inside :func:`optax.masked`.

    Args:
      spec: the user's tree of values (axes, or mask bools).
      flat_tree: the updates as ``(key_path, leaf)`` pairs, flattened with
        :func:`is_void` leaves.
      name: the option's name, for error messages.
      is_leaf: what counts as one value of ``spec``.

    Returns:
      For each leaf of ``flat_tree``, the key path of its governing entry in
      ``spec`` and that entry's value; ``(None, None)`` for a void leaf that
      ``spec`` does not reach.

    Raises:
      ValueError: naming the first key path where the two trees disagree.
    """
    by_path = dict(jax.tree_util.tree_flatten_with_path(spec, is_leaf=is_leaf)[0])
    below: dict[tuple, list[tuple]] = {}  # spec node -> the entries under it
    for q in by_path:
        for k in range(len(q)):
            below.setdefault(q[:k], []).append(q)
    fix = (
        f"Give {name} the same structure as the params (or a prefix of it), "
        "or a callable that builds it from them."
    )
    values: list[tuple[tuple | None, Any]] = []
    used: set[tuple] = set()
    for p, leaf in flat_tree:
        governing = [p[:k] for k in range(len(p) + 1) if p[:k] in by_path]
        inner = below.get(p, [])
        if governing:
            entry = governing[0]
        elif is_void(leaf):
            used.update(inner)
            values.append((None, None))
            continue
        elif len(inner) == 1 and _is_box_path(inner[0][len(p) :]):
            entry = inner[0]
        elif inner:
            try:
                node = _node_at(spec, p)
            except (KeyError, IndexError, AttributeError, TypeError):
                node = None
            hint = ""
            if name == "mask":
                hint = " (one bool; axes belong in reduction_axes=)"
            elif isinstance(node, list):
                hint = " (a tuple, not a list)"
            raise ValueError(
                f"The {name} tree does not match the params: it has "
                f"{'an entry' if len(inner) == 1 else 'entries'} at "
                f"{', '.join(keyname(q) for q in inner)}, inside leaf "
                f"{keyname(p)} of shape {getattr(leaf, 'shape', None)}. Give "
                f"that leaf one value{hint}. {fix}"
            )
        else:
            twins = [
                q
                for q in by_path
                if q != p[: len(q)] and keyname(q) == keyname(p[: len(q)])
            ]
            hint = ""
            if twins:
                hint = (
                    f" Its entry {keyname(twins[0])} prints alike but is another "
                    "kind of key (a list index or attribute where the params have "
                    "a dict key, or the reverse; nnx.Sequential state is a dict "
                    "keyed by ints, {0: ..., 1: ...})."
                )
            raise ValueError(
                f"The {name} tree does not match the params: it has no entry "
                f"for leaf {keyname(p)} of shape {getattr(leaf, 'shape', None)}."
                f"{hint} {fix}"
            )
        used.add(entry)
        values.append((entry, by_path[entry]))
    for q in by_path:
        if q not in used:
            raise ValueError(
                f"The {name} tree does not match the params: it has an entry at "
                f"{keyname(q)}, which is not in the params. {fix}"
            )
    return values


def resolve(
    option: Any, tree: Any, *, name: str, is_leaf: Callable[[Any], bool]
) -> tuple[list[tuple[tuple, Any]], Any, list[tuple[tuple | None, Any]]]:
    """Resolves a tree-or-function option against ``tree``, leaf by leaf.

    Calls ``option`` on ``tree`` if it is a function (see :func:`is_function`),
    flattens ``tree`` with :func:`is_void` leaves and matches the two.

    Returns:
      ``(flat, treedef, entries)``: ``tree`` as ``(key_path, leaf)`` pairs,
      its treedef, and for each leaf its governing ``(entry_path, value)`` as
      in :func:`_match_leaves`.
    """
    if is_function(option, is_leaf=is_leaf):
        option = option(tree)
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_void)
    return flat, treedef, _match_leaves(option, flat, name=name, is_leaf=is_leaf)
