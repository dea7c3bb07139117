"""The gradient centralization transformation."""

from __future__ import annotations

from collections import Counter
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._layouts import (
    Layout,
    ReductionAxes,
    check_layout,
    fan_in_size,
    is_centralizable,
    layout_axes,
)
from ._options import (
    check_bool,
    check_mask_entries,
    checked_mask,
    is_axes_spec,
    is_boxed_in,
    is_void,
    keyname,
    normalize_axes,
    resolve,
)


def centralize_leaf(g: Any, axes: tuple[int, ...] | None) -> Any:
    """Subtracts from ``g`` its mean over ``axes`` (one mean per other index).

    ``axes`` are already checked and normalized (sorted, >= 0). Leaves that GC
    must not touch (non-float, rank 0, zero-size, ``axes`` of ``None``, a
    fan-in of one entry) come back as they are. Half-precision means are taken
    in float32 and the result is cast back to ``g``'s dtype; other dtypes keep
    their own (float32 is not widened).

    Under ``jit`` this costs one extra read of ``g`` (the reduction); XLA
    fuses the subtraction into whatever consumes the result, such as the
    optimizer's own elementwise pass, so no centralized copy of ``g`` is
    written. A matrix-vector product with a ones vector was measured as the
    alternative on XLA:CPU and not kept: see benchmarks/README.md.
    """
    if axes is None or not is_centralizable(g):
        return g
    if fan_in_size(g.shape, axes) == 1:
        # One entry per unit: GC would zero the gradient and freeze the leaf.
        return g
    # Half-precision sums lose the mean; accumulate those in float32.
    acc = jnp.float32 if jnp.finfo(g.dtype).bits < 32 else g.dtype
    mean = jnp.mean(g, axis=axes, keepdims=True, dtype=acc)
    if acc == g.dtype:
        return g - mean
    return (g.astype(acc) - mean).astype(g.dtype)


def _leaf_axes(
    flat: list[tuple[tuple, Any]],
    entries: list[tuple[tuple | None, Any]],
    *,
    conv_only: bool,
) -> list[tuple[int, ...] | None]:
    """Each leaf's axes from its spec entry, checked against its shape.

    With ``conv_only`` a leaf of rank <= 3 gets ``None``, after the check.
    """
    pairs = list(zip(flat, entries, strict=True))
    arrays_under = Counter(e for (_, g), (e, _) in pairs if not is_void(g))
    axes: list[tuple[int, ...] | None] = []
    for (path, g), (entry, a) in pairs:
        if a is None or entry is None or is_void(g):
            axes.append(None)
            continue
        if arrays_under[entry] > 1 or not is_boxed_in(entry, path):
            raise ValueError(
                f"reduction_axes gives the axes {a} to {keyname(entry)}, which "
                "is a subtree of the params, not one array. Give each array "
                "its own axes, or None to leave a whole subtree alone."
            )
        # Checked on every leaf, even one GC then leaves alone (an integer
        # leaf, or a low-rank one under conv_only), so a typo cannot hide.
        checked = normalize_axes(a, np.shape(g), keyname(path))
        axes.append(None if conv_only and np.ndim(g) <= 3 else checked)
    return axes


def _centralize_tree(
    updates: optax.Updates,
    reduction_axes: ReductionAxes | None,
    *,
    layout: Layout,
    conv_only: bool,
) -> optax.Updates:
    axes: list[tuple[int, ...] | None]
    if reduction_axes is None:
        flat, treedef = jax.tree_util.tree_flatten_with_path(updates, is_leaf=is_void)
        axes = [
            layout_axes(
                len(getattr(g, "shape", ())), layout=layout, conv_only=conv_only
            )
            for _, g in flat
        ]
    else:
        flat, treedef, entries = resolve(
            reduction_axes, updates, name="reduction_axes", is_leaf=is_axes_spec
        )
        axes = _leaf_axes(flat, entries, conv_only=conv_only)
    return jax.tree.unflatten(
        treedef,
        [centralize_leaf(g, a) for (_, g), a in zip(flat, axes, strict=True)],
    )


def centralize(
    *,
    conv_only: bool = False,
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Gradient Centralization: removes each output unit's mean gradient.

    Every kernel gradient is a set of weight vectors, one per output unit.
    Gradient Centralization (GC) subtracts from each its mean over the fan-in
    axes, :math:`g_i \leftarrow g_i - \frac{1}{M} \sum_j g_{ij}`: an
    orthogonal projection per output unit. Put it ahead of an optimizer to
    centralize the gradient (the paper's recipe) or after one to centralize
    the step.

    Which axes are fan-in:

    * ``reduction_axes=None`` (default): the ``layout`` rule. With
      ``"channels_last"`` (Flax linen/nnx, Haiku, Keras: Dense ``(in, out)``,
      Conv ``(kh, kw, in, out)``) every leaf of rank >= 2 is averaged over all
      axes but the last. With ``"channels_first"`` (PyTorch, Equinox) over all
      axes but the first, the axes :func:`optax.centralize` uses. Leaves of
      rank 0 and 1 (biases, norm scales) pass through. The rule sees ranks,
      not layers: it is wrong on attention kernels, embeddings and
      **stacked layers** (``nnx.scan``/``nnx.vmap``/``nn.scan``/``nn.vmap``
      stacks, ensembles, experts), whose kernels ``(L, in, out)`` it
      averages over ``(L, in)`` and whose biases ``(L, out)`` and norm
      scales ``(L, d)`` it centralizes across layers. Give those
      ``reduction_axes`` (:func:`optax_gc.flax.fan_in_axes` finds them), or
      ``jax.vmap`` the update over the stack axis.
    * ``reduction_axes`` given: it decides every leaf and ``layout`` is not
      consulted (it is still validated). Use it for kernels no single-axis
      rule fits, e.g. Flax attention kernels ``(in, heads, head_dim)`` whose
      fan-in is axis 0 alone. :func:`optax_gc.default_reduction_axes` gives
      the layout rule's tree as a starting point.
    * ``conv_only=True`` then keeps only leaves of rank > 3 (conv kernels),
      the paper's GCC variant, whichever of the two chose the axes.
    * ``mask`` then restricts GC to the leaves it marks ``True``, as
      :func:`optax.masked` does (it is implemented with it), with the tree
      matched to the params by key path like ``reduction_axes``.

    Integer, bool and ``float0`` leaves, ``None``, :class:`optax.MaskedNode`,
    Python scalars and zero-size arrays always pass through untouched, and
    so does a leaf whose fan-in has a single entry per unit (an Equinox conv
    bias ``(out, 1, 1)``, a Dense layer with one input): centralizing it
    would zero its gradient and freeze it (:func:`optax.centralize` does).
    bfloat16/float16 gradients are averaged in float32 and returned in their
    own dtype. The transform is stateless and pure; it runs under
    :func:`jax.jit`, :func:`jax.vmap` and :func:`jax.shard_map`. Under ``jit``
    with sharded params, a kernel sharded along a fan-in axis is reduced in
    place: only the per-output means cross devices. Inside ``shard_map`` it
    sees the local blocks, so there shard kernels along output axes only.

    Args:
      conv_only: only centralize leaves of rank > 3 (conv kernels; the
        paper's GCC). Flax ``Conv1D`` kernels are rank 3 and are excluded.
      layout: ``"channels_last"`` or ``"channels_first"``: which axis of a
        kernel holds the output units when ``reduction_axes`` is ``None``.
      reduction_axes: a tree like the params (or a prefix of it) whose leaves
        are a tuple of axes (an int is one axis; negative axes allowed) or
        ``None`` (leave that leaf, or that whole subtree, alone); or a
        callable that builds such a tree from the updates, which have the
        params' structure and shapes (masked-out leaves arrive as
        :class:`optax.MaskedNode`). A tuple of numbers is always read as
        axes, never as a subtree. The tree is matched to the updates by key
        path, so a plain dict fits an ``nnx.State`` with the same keys, and
        an ``nnx.Variable`` box (``.value``) on either side is seen through.
        Axes must be static Python ints.
      mask: a tree of bools like the params (or a prefix of it), or a
        callable that builds one; only ``True`` leaves are centralized.
        Matched by key path like ``reduction_axes``. Values must be bools
        (Python, NumPy or a concrete 0-d bool array), one per leaf.

    Returns:
      A stateless :class:`optax.GradientTransformationExtraArgs` (extra
      keyword arguments to ``update`` are accepted and ignored).

    Raises:
      TypeError: for a ``conv_only`` that is not a bool (at construction).
      ValueError: for an unknown ``layout`` or a mask entry that is not a
        bool (at construction; a traced one says to use ``static_args``); at
        ``update`` (naming the leaf's key path and shape): for axes that are
        not ints, out of range, empty or repeated, axes given to a whole
        subtree, and a ``reduction_axes``/``mask`` tree that does not match
        the params. Axes are checked on every leaf they name, including
        those GC then leaves alone (integer leaves, ``conv_only``).

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import optax_gc
      >>> grads = {"kernel": jnp.array([[1.0, 2.0], [3.0, 6.0]]),  # (in, out)
      ...          "bias": jnp.array([1.0, 1.0])}
      >>> gc = optax_gc.centralize()
      >>> updates, _ = gc.update(grads, gc.init(grads))
      >>> updates["kernel"]  # each column (output unit) now sums to zero
      Array([[-1., -2.],
             [ 1.,  2.]], dtype=float32)
      >>> updates["bias"]  # rank 1: untouched
      Array([1., 1.], dtype=float32)
      >>> tx = optax.chain(optax_gc.centralize(), optax.adam(1e-3))

    References:
      Yong, Huang, Hua and Zhang, `Gradient Centralization: A New Optimization
      Technique for Deep Neural Networks <https://arxiv.org/abs/2004.01461>`_,
      ECCV 2020.
    """
    check_layout(layout)
    check_bool("conv_only", conv_only)
    if mask is not None:
        check_mask_entries(mask, name="mask", action="centralize it")

    def init_fn(params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: optax.Updates,
        state: optax.EmptyState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, optax.EmptyState]:
        del params, extra_args
        updates = _centralize_tree(
            updates, reduction_axes, layout=layout, conv_only=conv_only
        )
        return updates, state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    if mask is None:
        return tx
    return optax.masked(tx, checked_mask(mask, name="mask", action="centralize it"))
