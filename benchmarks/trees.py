"""Parameter trees for the benchmarks, in Flax layout.

Shapes only, as nested dicts of ``jax.ShapeDtypeStruct``; :func:`materialize`
fills one with random arrays. ResNet-50 and ViT-B/16 are read from the linen
modules of ``models.py`` (without computing anything). Kernels are
Flax-shaped: Dense ``(in, out)``, Conv ``(kh, kw, in, out)``, attention
query/key/value ``(in, heads, dim)`` and output ``(heads, dim, out)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Tree = dict[str, Any]


def _s(*shape: int, dtype: Any = jnp.float32) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype)


def resnet50(num_classes: int = 1000) -> Tree:
    """ResNet-50 (v1.5, as in the Flax ImageNet example): 25,557,032 params.

    The params of ``models.ResNet50``, so the train-step benchmark trains
    exactly this tree.
    """
    from benchmarks import models

    return models.param_shapes("resnet50", num_classes=num_classes)


def vit_b16(num_classes: int = 1000, image: int = 224) -> Tree:
    """ViT-B/16 (as in google-research/vision_transformer): 86,567,656 params.

    The params of ``models.ViTB16`` on ``image`` x ``image`` inputs (the
    position embedding has one row per patch and one for the class token).
    """
    from benchmarks import models

    return models.param_shapes("vit_b16", image=image, num_classes=num_classes)


def vit_reduction_axes(tree: Tree) -> Any:
    """Per-leaf fan-in axes for :func:`vit_b16`, as a careful user gives them.

    The layout rule, except for attention kernels (fan-in axis 0 for
    query/key/value, axes 0 and 1 for the output projection); their
    ``(heads, dim)`` biases and the token and position embeddings are left
    alone.
    """

    def axes(path: tuple, leaf: jax.ShapeDtypeStruct) -> Any:
        keys = [getattr(k, "key", None) for k in path]
        if leaf.ndim < 2 or keys[-1] == "bias" or keys[0] in ("cls", "pos_embedding"):
            return None
        if "MultiHeadDotProductAttention_0" in keys:
            return (0, 1) if keys[-2] == "out" else (0,)
        return tuple(range(leaf.ndim - 1))

    return jax.tree_util.tree_map_with_path(axes, tree)


def cnn() -> Tree:
    """The example CNN (``examples/nnx_cnn/models.py``) on 28x28x1 inputs."""
    from flax import nnx

    from examples.nnx_cnn.models import CNN

    model = nnx.eval_shape(lambda: CNN((28, 28, 1), 10, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param).to_pure_dict()
    return jax.tree.map(lambda x: _s(*x.shape, dtype=x.dtype), state)


def tiny() -> Tree:
    """A few small leaves of each kind, for smoke tests."""
    return {
        "conv": {"kernel": _s(3, 3, 4, 8), "bias": _s(8)},
        "dense": {"kernel": _s(32, 16), "bias": _s(16)},
        "head": {"kernel": _s(16, 1)},
    }


TREES = {"resnet50": resnet50, "vit_b16": vit_b16, "cnn": cnn, "tiny": tiny}


def reduction_axes_for(name: str) -> Any:
    """The ``reduction_axes`` to benchmark on tree ``name`` (None: layout rule)."""
    return vit_reduction_axes(vit_b16()) if name == "vit_b16" else None


def num_params(tree: Tree) -> int:
    """Total number of entries in a tree of shapes."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def materialize(tree: Tree, seed: int = 0) -> Tree:
    """Random normal arrays with the tree's shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, x.shape, x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )
