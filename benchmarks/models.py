"""ResNet-50 and ViT-B/16 in Flax linen, for the train-step benchmark.

``ResNet50`` is the Flax ImageNet example's ResNet-50 (v1.5: the stride on
the 3x3 conv; BatchNorm with momentum 0.9, the last norm of each block
zero-initialised), ``ViTB16`` the ViT-B/16 of google-research/
vision_transformer (patch embedding, class token, learned position
embedding, pre-norm encoder blocks, GELU MLP). Parameters are named as in
``trees.py``, whose ResNet-50 and ViT-B/16 trees are these modules' shapes,
so the update and the train-step benchmarks measure the same parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class Bottleneck(nn.Module):
    """A bottleneck block: 1x1, 3x3 (strided), 1x1 (x4), projected shortcut.

    Attributes:
        filters: Width of the 1x1 and 3x3 convs (the output is 4x wider).
        strides: Strides of the 3x3 conv and of the projection.
        train: BatchNorm on batch statistics (True) or running ones.
    """

    filters: int
    strides: tuple[int, int] = (1, 1)
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, h, w, c)`` -> ``(batch, h / s, w / s, 4 * filters)``."""
        conv = partial(nn.Conv, use_bias=False)
        norm = partial(
            nn.BatchNorm,
            use_running_average=not self.train,
            momentum=0.9,
            epsilon=1e-5,
        )
        y = nn.relu(norm()(conv(self.filters, (1, 1))(x)))
        y = nn.relu(norm()(conv(self.filters, (3, 3), self.strides)(y)))
        y = conv(4 * self.filters, (1, 1))(y)
        y = norm(scale_init=nn.initializers.zeros_init())(y)
        if x.shape != y.shape:
            x = conv(4 * self.filters, (1, 1), self.strides, name="conv_proj")(x)
            x = norm(name="norm_proj")(x)
        return nn.relu(x + y)


class ResNet50(nn.Module):
    """ResNet-50 v1.5 (25,557,032 parameters at 1000 classes).

    Attributes:
        num_classes: Width of the head.
        train: BatchNorm on batch statistics (needs ``mutable=["batch_stats"]``).

    Example:
        >>> import jax
        >>> model = ResNet50(num_classes=10)
        >>> x = jax.ShapeDtypeStruct((1, 32, 32, 3), "float32")
        >>> shapes = jax.eval_shape(model.init, jax.random.key(0), x)
        >>> shapes["params"]["head"]["kernel"].shape
        (2048, 10)
    """

    num_classes: int = 1000
    train: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, 3)``."""
        x = nn.Conv(
            64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], use_bias=False,
            name="conv_init",
        )(x)  # fmt: skip
        x = nn.BatchNorm(
            use_running_average=not self.train, momentum=0.9, epsilon=1e-5,
            name="bn_init",
        )(x)  # fmt: skip
        x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding="SAME")
        for stage, blocks in enumerate((3, 4, 6, 3)):
            for b in range(blocks):
                x = Bottleneck(
                    64 * 2**stage,
                    strides=(2, 2) if stage > 0 and b == 0 else (1, 1),
                    train=self.train,
                    name=f"stage{stage + 1}_block{b + 1}",
                )(x)
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: self-attention, then a GELU MLP.

    Attributes:
        heads: Attention heads.
        mlp_dim: Hidden width of the MLP.
    """

    heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(batch, tokens, dim)`` -> same shape."""
        y = nn.LayerNorm(name="LayerNorm_0")(x)
        x = x + nn.MultiHeadDotProductAttention(
            num_heads=self.heads, name="MultiHeadDotProductAttention_0"
        )(y, y)
        y = nn.LayerNorm(name="LayerNorm_1")(x)
        return x + MlpBlock(self.mlp_dim, name="MlpBlock_3")(y)


class MlpBlock(nn.Module):
    """Dense, GELU, Dense back to the input width.

    Attributes:
        mlp_dim: Hidden width.
    """

    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``(..., dim)`` -> same shape."""
        y = nn.gelu(nn.Dense(self.mlp_dim, name="Dense_0")(x))
        return nn.Dense(x.shape[-1], name="Dense_1")(y)


class ViTB16(nn.Module):
    """ViT-B/16 (86,567,656 parameters at 224x224 and 1000 classes).

    The class token ``cls`` and the position embedding ``pos_embedding``
    are parameters of this module itself (no layer rule knows them): give
    :data:`VIT_RULES` to ``optax_gc.flax.linen_fan_in_axes``.

    Attributes:
        num_classes: Width of the head.
        dim: Width of the residual stream.
        heads: Attention heads per block.
        mlp_dim: Hidden width of the MLPs.
        layers: Encoder blocks.
        patch: Side of the square patches.
    """

    num_classes: int = 1000
    dim: int = 768
    heads: int = 12
    mlp_dim: int = 3072
    layers: int = 12
    patch: int = 16

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``(batch, num_classes)`` for images ``(batch, h, w, 3)``."""
        p = (self.patch, self.patch)
        x = nn.Conv(self.dim, p, strides=p, padding="VALID", name="embedding")(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), x], 1)
        pos = self.param(
            "pos_embedding", nn.initializers.normal(0.02), (1, *x.shape[1:])
        )
        x = x + pos
        for i in range(self.layers):
            x = EncoderBlock(self.heads, self.mlp_dim, name=f"encoderblock_{i}")(x)
        x = nn.LayerNorm(name="encoder_norm")(x)
        return nn.Dense(self.num_classes, name="head")(x[:, 0])


# The ViT's own parameters are embeddings, not weight vectors.
VIT_RULES: dict[type, Callable[[Any], dict[str, None]]] = {
    ViTB16: lambda layer: {"cls": None, "pos_embedding": None}
}

MODELS: dict[str, Callable[..., nn.Module]] = {"resnet50": ResNet50, "vit_b16": ViTB16}


def param_shapes(name: str, *, image: int = 224, num_classes: int = 1000) -> Any:
    """The ``params`` of model ``name`` as ``jax.ShapeDtypeStruct`` (no compute)."""
    model = MODELS[name](num_classes=num_classes)
    x = jax.ShapeDtypeStruct((1, image, image, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]
