"""Did GC run, and where? Per-kernel measurements on the axes GC uses.

The axes come from the library, never re-derived here:
:func:`optax_gc.default_reduction_axes` for the rank rule of plain
``centralize()`` (with its ``conv_only`` filter and its fan-in-of-one rule),
or :func:`optax_gc.flax.fan_in_axes` for models whose layers it reads. Two
measurements use them:

* :func:`fan_in_probe`, an identity transformation placed in an optax chain
  whose state keeps the largest |per-output fan-in mean| / RMS of the updates
  passing through it: about 1e-7 (float32 rounding) for a centralized
  gradient, 1e-2 to 1 for a raw one;
* :func:`kernel_changes`, how far each kernel and each output unit's fan-in
  weight sum moved in training; GC with SGD (no weight decay) keeps the sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_gc

Axes = dict[str, tuple[int, ...]]


def leaf_name(path: Sequence[Any]) -> str:
    """``blocks/0/attn/query/kernel`` from a key path (attribute reads left out).

    Example:
      >>> leaf_name(jax.tree_util.tree_flatten_with_path({"a": [0, 1]})[0][1][0])
      'a/1'
    """
    # DictKey and FlattenedIndexKey have .key, SequenceKey has .idx.
    return "/".join(
        str(getattr(k, "key", getattr(k, "idx", k)))
        for k in path
        if not isinstance(k, jax.tree_util.GetAttrKey)
    )


def is_axes(v: Any) -> bool:
    """One entry of an axes tree: a tuple of axes or ``None`` (a leaf of it)."""
    return v is None or isinstance(v, tuple)


def named_axes(axes: Any) -> Axes:
    """The leaves of an axes tree that GC touches, by name, with their axes.

    Example:
      >>> named_axes({"dense": {"kernel": (0,), "bias": None}})
      {'dense/kernel': (0,)}
    """
    flat = jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_axes)[0]
    return {leaf_name(p): a for p, a in flat if a is not None}


def gc_axes(params: optax.Params, *, conv_only: bool = False) -> Axes:
    """The leaves plain ``optax_gc.centralize(conv_only=...)`` touches, by name.

    Example:
      >>> params = {"conv": {"kernel": jnp.zeros((3, 3, 1, 8))},
      ...           "head": {"kernel": jnp.zeros((8, 1))},
      ...           "one_input": {"kernel": jnp.zeros((1, 8))}}
      >>> gc_axes(params)
      {'conv/kernel': (0, 1, 2), 'head/kernel': (0,)}
      >>> gc_axes(params, conv_only=True)
      {'conv/kernel': (0, 1, 2)}
    """
    return named_axes(optax_gc.default_reduction_axes(params, conv_only=conv_only))


def unit_ratios(tree: Any, axes: Axes) -> dict[str, jax.Array]:
    """Per kernel and output unit: |mean over its fan-in axes| / RMS of the kernel.

    The result has the output axes' shape: ``(heads, head_dim)`` for an
    attention query kernel, ``(out,)`` for a Dense one.
    """
    out = {}
    for path, g in jax.tree_util.tree_leaves_with_path(tree):
        name = leaf_name(path)
        if name in axes:
            rms = jnp.sqrt(jnp.mean(jnp.square(g)))
            mean = jnp.mean(g, axis=axes[name])
            out[name] = jnp.abs(mean) / (rms + jnp.finfo(g.dtype).tiny)
    return out


def fan_in_probe(axes: Axes) -> optax.GradientTransformation:
    """Identity on the updates; its state keeps :func:`unit_ratios`' running max.

    Placed right ahead of an optimizer, it records what the optimizer
    receives (the centralized gradient with GC, the raw one without); after
    it, what is applied.

    Example:
      >>> import optax
      >>> g = {"dense": {"kernel": jnp.array([[1.0, 2.0], [3.0, 2.0]])}}
      >>> tx = optax.chain(optax_gc.centralize(), fan_in_probe(gc_axes(g)))
      >>> _, (_, seen) = tx.update(g, tx.init(g))
      >>> float(seen["dense/kernel"].max())
      0.0
    """

    def init_fn(params: optax.Params) -> dict[str, jax.Array]:
        return {k: jnp.zeros_like(v) for k, v in unit_ratios(params, axes).items()}

    def update_fn(updates, state, params=None):
        del params
        new = unit_ratios(updates, axes)
        return updates, {k: jnp.maximum(state[k], new[k]) for k in state}

    return optax.GradientTransformation(init_fn, update_fn)


def kernel_changes(
    before: optax.Params, after: optax.Params, axes: Axes
) -> dict[str, dict[str, float]]:
    """How far each kernel moved, and how far its fan-in weight sums moved.

    In float64 from the weights, so that float32 rounding is all GC leaves.

    Returns:
      ``{"weight": {kernel: largest |change of a weight|}, "fan_in_sum":
      {kernel: largest |change of an output unit's fan-in weight sum|}}``.

    Example:
      >>> w0 = {"dense": {"kernel": np.zeros((2, 2))}}
      >>> w1 = {"dense": {"kernel": np.array([[1.0, 0.5], [-1.0, 0.5]])}}
      >>> kernel_changes(w0, w1, gc_axes(w0))
      {'weight': {'dense/kernel': 1.0}, 'fan_in_sum': {'dense/kernel': 1.0}}
    """
    out: dict[str, dict[str, float]] = {"weight": {}, "fan_in_sum": {}}
    flat = jax.tree_util.tree_leaves_with_path(before)
    for (path, w0), w1 in zip(flat, jax.tree.leaves(after), strict=True):
        name = leaf_name(path)
        if name in axes:
            d = np.asarray(w1, np.float64) - np.asarray(w0, np.float64)
            out["weight"][name] = float(np.abs(d).max())
            out["fan_in_sum"][name] = float(np.abs(d.sum(axes[name])).max())
    return out
