"""How the user's options are read and checked: axis specs, masks, numbers.

Everything a user passes that is not an array goes through here, at
construction where it can (a wrong argument is an error naming it, never a
different result) and when the params are first seen otherwise:

* matching a tree-or-function option (``reduction_axes``, ``mask``,
  ``gc_mask``) to the updates by key path (:func:`resolve`), with errors that
  name the first place the two disagree;
* normalising and checking one leaf's axes (:func:`normalize_axes`);
* checking mask values (:func:`check_mask_entries`, :func:`checked_mask`);
* checking flags and hyperparameters as the authors' and PyTorch's
  optimizers do (``0 <= lr``, ``0 <= betas < 1``, ``0 <= eps``,
  ``0 <= weight_decay``, Nesterov needs a momentum). Only concrete Python
  and NumPy numbers are range-checked; schedules, callables and JAX arrays
  (which ``optax.inject_hyperparams`` passes, traced under ``jit``) are
  accepted as they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


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


_STATIC_HINT = (
    "Options that are trees or functions must be static: with "
    "optax.inject_hyperparams, list {name!r} in static_args, e.g. "
    "optax.inject_hyperparams(optax_gc.adamw, static_args=({name!r},))."
)


def static_hint(name: str) -> str:
    """How to keep an option static under :func:`optax.inject_hyperparams`."""
    return _STATIC_HINT.format(name=name)


def check_bool(name: str, value: Any) -> None:
    """Raises a TypeError unless ``value`` is a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"{name} must be True or False, got {value!r} "
            f"({type(value).__name__}); any other value would be read as its "
            "truthiness."
        )


def _is_concrete_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_number(
    name: str,
    value: Any,
    *,
    low: float = 0.0,
    high: float = math.inf,
    include_high: bool = True,
    allow_none: bool = False,
    allow_schedule: bool = False,
) -> None:
    """Checks a hyperparameter that must be a number in a range.

    Args:
      name: the argument's name, for the message.
      value: the argument.
      low: the smallest value allowed (always included).
      high: the upper bound.
      include_high: whether ``high`` itself is allowed.
      allow_none: whether ``None`` is allowed (``momentum=None``).
      allow_schedule: whether a callable (a schedule) is allowed; JAX arrays
        always are.

    Raises:
      TypeError: for ``None`` (unless allowed), a bool, a string, a callable
        where no schedule is allowed, or any other non-number.
      ValueError: for a concrete number outside the range, or NaN.
    """
    if value is None:
        if allow_none:
            return
        raise TypeError(f"{name} is None; give a number{_or_schedule(allow_schedule)}.")
    if isinstance(value, jax.Array) or (allow_schedule and callable(value)):
        return
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not _is_concrete_number(value):
        raise TypeError(
            f"{name} must be a number{_or_schedule(allow_schedule)}, got "
            f"{value!r} ({type(value).__name__})."
        )
    v = float(value)
    upper_ok = v <= high if include_high else v < high
    if not (low <= v and upper_ok):
        bracket = "]" if include_high else ")"
        upper = "inf" if math.isinf(high) else f"{high:g}"
        raise ValueError(
            f"{name}={value!r} is out of range: it must be in "
            f"[{low:g}, {upper}{bracket}."
        )


def _or_schedule(allow_schedule: bool) -> str:
    return " or a schedule" if allow_schedule else ""


def check_unit_interval(name: str, value: Any) -> None:
    """A decay rate (``b1``, ``b2``, ``decay``): in ``[0, 1)``."""
    check_number(name, value, low=0.0, high=1.0, include_high=False)


def check_nesterov(nesterov: Any, momentum: Any) -> None:
    """``nesterov=True`` needs a momentum, as in :class:`torch.optim.SGD`."""
    check_bool("nesterov", nesterov)
    if not nesterov:
        return
    if momentum is None or (_is_concrete_number(momentum) and float(momentum) == 0):
        raise ValueError(
            f"nesterov=True needs a momentum > 0, got momentum={momentum!r}. "
            "Give a momentum (e.g. 0.9) or nesterov=False."
        )


def mask_value_error(
    name: str, value: Any, where: str, *, action: str
) -> ValueError | None:
    """The error for a mask entry that is not one bool, or ``None`` if it is.

    A mask says, per parameter, yes or no: a Python or NumPy bool (or a
    concrete 0-d bool array). Anything else would be read by its truthiness
    (``"no"`` is true) or fail deep inside JAX.

    Args:
      name: the option (``"mask"``, ``"gc_mask"``).
      value: the entry.
      where: the leaf (or mask entry) it governs, as text.
      action: what ``True`` does, for the message.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, jax.core.Tracer):
        return ValueError(
            f"{name} gives a traced value to {where}: mask values must be static "
            f"Python bools. {static_hint(name)}"
        )
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape == () and dtype is not None and np.dtype(dtype) == np.bool_:
        return None
    if shape:
        hint = (
            f" A per-element mask (shape {tuple(shape)}) is not supported: give "
            "each parameter one bool, for the whole array."
        )
    elif isinstance(value, str):
        hint = " A string is not a bool (any non-empty string is true)."
    elif isinstance(value, tuple):
        hint = " A tuple of axes is not a mask: axes belong in reduction_axes=."
    else:
        hint = ""
    shown = (
        f"an array of shape {tuple(shape)} and dtype {dtype}"
        if shape
        else f"{value!r} ({type(value).__name__})"
    )
    return ValueError(
        f"{name} gives {shown} to {where}. Mask "
        f"values are bools: True to {action}, False to leave it alone.{hint}"
    )


def check_mask_entries(mask: Any, *, name: str, action: str) -> None:
    """Checks a mask's values at construction, naming the entry.

    A mask that is a function is checked when it is called (see
    :func:`checked_mask`); a tree is checked here, before any params exist.

    Raises:
      ValueError: for a JAX array (or tracer) given as the whole mask (a
        callable mask under ``optax.inject_hyperparams`` is taken for a
        schedule and arrives as its value), or an entry that is not one bool.
    """
    if isinstance(mask, jax.Array):
        raise ValueError(
            f"{name} is an array ({mask!r}), not a tree of bools or a function "
            f"of the params. {static_hint(name)}"
        )
    if is_function(mask, is_leaf=lambda x: x is None):
        return
    flat = jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_mask_entry)[0]
    for path, value in flat:
        if value is None:
            continue  # None is refused (or ignored) where it meets the params
        error = mask_value_error(
            name, value, f"its entry {keyname(path)}", action=action
        )
        if error is not None:
            raise error


def _is_mask_entry(x: Any) -> bool:
    # None, and a tuple of numbers (axes given to a mask): one entry each.
    return x is None or (
        isinstance(x, tuple)
        and bool(x)
        and all(isinstance(a, int) and not isinstance(a, bool) for a in x)
    )


def checked_mask(mask: Any, *, name: str, action: str) -> Callable[[Any], Any]:
    """A mask callable for :func:`optax.masked`, laid out like the updates.

    The user's mask may be a prefix of the params, match them by key path
    only, or be a callable; it is resolved leaf by leaf (with errors that name
    the leaf) and rebuilt on the structure of the tree optax hands it, so
    :func:`optax.masked` then maps it over that tree without surprises. As
    with ``optax.masked``, params passed to ``update`` must have the updates'
    structure.
    """

    def build(tree: Any) -> Any:
        flat, treedef, entries = resolve(
            mask, tree, name=name, is_leaf=lambda x: x is None
        )
        for (path, leaf), (entry, m) in zip(flat, entries, strict=True):
            if entry is None:
                continue  # a void leaf no entry reaches
            where = f"leaf {keyname(path)} of shape {getattr(leaf, 'shape', None)}"
            if m is None and is_void(leaf):
                continue  # None over a None (or MaskedNode) leaf, as optax allows
            if m is None:
                raise ValueError(
                    f"{name} gives None to {keyname(entry)}, over {where}. "
                    f"Give True ({action}) or False (leave it alone)."
                )
            error = mask_value_error(name, m, where, action=action)
            if error is not None:
                raise error
        return jax.tree.unflatten(
            treedef, [e is not None and bool(m) for e, m in entries]
        )

    return build
