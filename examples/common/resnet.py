"""A CIFAR-style ResNet with BatchNorm in Flax NNX (He et al. 2016, section 4.2).

The network of the paper's CIFAR experiments, scaled by two numbers: a 3x3
stem convolution, three stages of ``blocks`` basic residual blocks each with
``width``, ``2 * width`` and ``4 * width`` channels (the second and third
start with stride 2), global average pooling and a Dense head. ``blocks=3,
width=16`` is ResNet-20 (``depth = 6 * blocks + 2``). Each block is conv ->
BN -> ReLU -> conv -> BN, plus the shortcut, then ReLU; where the shape
changes the shortcut is a 1x1 convolution and BN (option B, as in the
CIFAR ResNets the GC authors trained). Convolutions have no bias (BN
follows), kernels are He-normal, and BN uses PyTorch's running-average
momentum (0.1 in PyTorch's convention, 0.9 in Flax's) and epsilon (1e-5).

The BN running statistics are ``nnx.BatchStat`` variables, not
``nnx.Param``: ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and the compare
example's split never hand them to the optimizer, so neither GC nor weight
decay sees them. GC's rank rule touches the conv kernels (rank 4) and the
head's kernel (rank 2), never BN's scale and bias (rank 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# BN as in PyTorch (the GC authors' framework): Flax's momentum is the weight
# of the old running average, PyTorch's the weight of the new batch.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# He (Kaiming) normal, untruncated, as PyTorch's kaiming_normal_ (fan-in mode).
_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(cin: int, cout: int, size: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(size, size),
        strides=(stride, stride),
        padding="SAME",
        use_bias=False,
        kernel_init=_KERNEL_INIT,
        rngs=rngs,
    )


def _norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


class Block(nnx.Module):
    """A basic residual block: two 3x3 convs with BN, and the shortcut.

    Args:
        cin: Input channels.
        cout: Output channels.
        stride: Stride of the first conv (and of the shortcut's 1x1 conv).
        rngs: Flax NNX random streams (``params``).
    """

    def __init__(self, cin: int, cout: int, *, stride: int, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(cin, cout, 3, stride, rngs)
        self.bn1 = _norm(cout, rngs)
        self.conv2 = _conv(cout, cout, 3, 1, rngs)
        self.bn2 = _norm(cout, rngs)
        # nnx.data: the attribute holds a module or None (the identity).
        self.shortcut = nnx.data(
            nnx.Sequential(_conv(cin, cout, 1, stride, rngs), _norm(cout, rngs))
            if stride != 1 or cin != cout
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """The block's output, ``relu(F(x) + shortcut(x))``."""
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
    """ResNet-(6 * blocks + 2) for small images, with BatchNorm.

    Args:
        input_shape: One image's shape, ``(height, width, channels)``.
        num_classes: Number of classes.
        blocks: Residual blocks per stage (3: ResNet-20, 1: ResNet-8).
        width: Channels of the first stage (16 in the paper's CIFAR ResNets).
        rngs: Flax NNX random streams (``params``).

    Example:
        >>> import jax
        >>> from flax import nnx
        >>> model = nnx.eval_shape(  # shapes only: no arrays are drawn
        ...     lambda: ResNet((28, 28, 1), 10, blocks=1, rngs=nnx.Rngs(0))
        ... )
        >>> model.depth
        8
        >>> nnx.state(model, nnx.BatchStat)["stem_bn"]["mean"].shape
        (16,)
        >>> images = jax.ShapeDtypeStruct((2, 28, 28, 1), "float32")
        >>> jax.eval_shape(lambda model, x: model(x), model, images).shape
        (2, 10)
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        blocks: int = 3,
        width: int = 16,
        rngs: nnx.Rngs,
    ) -> None:
        if blocks < 1 or width < 1:
            raise ValueError(
                f"ResNet needs blocks >= 1 and width >= 1, got blocks={blocks}, "
                f"width={width}."
            )
        self.depth = 6 * blocks + 2
        self.stem = _conv(input_shape[-1], width, 3, 1, rngs)
        self.stem_bn = _norm(width, rngs)
        layers, cin = [], width
        for stage in range(3):
            cout = width * 2**stage
            for i in range(blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(Block(cin, cout, stride=stride, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(layers)
        self.head = nnx.Linear(cin, num_classes, kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of images ``(batch, height, width, channels)``."""
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)))
