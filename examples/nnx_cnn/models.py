"""The article's CNN in Flax NNX, adapted to the input size."""

from __future__ import annotations

import jax
from flax import nnx


class CNN(nnx.Module):
    """Conv 16/32/64 (3x3, each followed by 2x2 max-pooling), dropout, Dense 512.

    The article this project started from trained this network (Keras,
    sigmoid output for two classes). Here the convolutions use ``SAME``
    padding, so it fits 8x8 digits as well as 28x28 Fashion-MNIST, and the
    head is a Dense layer over ``num_classes`` logits (softmax in the loss).

    Args:
        input_shape: One image's shape, ``(height, width, channels)``.
        num_classes: Number of classes.
        dropout_rate: Dropout before and after the Dense 512 layer.
        rngs: Flax NNX random streams (``params`` and ``dropout``).

    Example:
        >>> import jax.numpy as jnp
        >>> from flax import nnx
        >>> model = CNN((8, 8, 1), 10, rngs=nnx.Rngs(0))
        >>> model(jnp.ones((2, 8, 8, 1))).shape
        (2, 10)
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        dropout_rate: float = 0.5,
        rngs: nnx.Rngs,
    ) -> None:
        height, width, channels = input_shape
        self.conv1 = nnx.Conv(channels, 16, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(16, 32, kernel_size=(3, 3), rngs=rngs)
        self.conv3 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
        for _ in range(3):  # SAME convs; each pool halves, rounding down
            height, width = _pooled(height), _pooled(width)
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.dense1 = nnx.Linear(height * width * 64, 512, rngs=rngs)
        self.dense2 = nnx.Linear(512, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits for a batch of images ``(batch, height, width, channels)``."""
        for conv in (self.conv1, self.conv2, self.conv3):
            x = nnx.relu(conv(x))
            window = (_window(x.shape[1]), _window(x.shape[2]))
            x = max_pool(x, window)
        x = self.dropout(x.reshape(x.shape[0], -1))
        x = self.dropout(nnx.relu(self.dense1(x)))
        return self.dense2(x)


def _window(size: int) -> int:
    """Pooling window along an axis: 2, or 1 once the axis is down to 1.

    28x28 images go 28, 14, 7, 3 through the three pools and 8x8 digits 8, 4,
    2, 1; a smaller input reaches 1 earlier, and a 2-wide pool would then
    leave nothing.
    """
    return 2 if size > 1 else 1


def _pooled(size: int) -> int:
    """An axis' size after one pool with :func:`_window` (VALID, floor)."""
    return size // _window(size)


def max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """Non-overlapping max-pooling (VALID, stride = window) by a reshape.

    Same values as ``max_pool(x, window, strides=window)``, but its gradient
    is a plain elementwise select instead of XLA's pooling-gradient op, which
    made the whole train step about 2.3x slower on CPU (102 vs 44 ms per
    Fashion-MNIST batch of 128). At a tie the gradient goes to every maximum;
    after a ReLU ties are zeros, whose gradient is zero anyway.
    """
    wh, ww = window
    b, h, w, c = x.shape
    x = x[:, : h - h % wh, : w - w % ww]
    return x.reshape(b, h // wh, wh, w // ww, ww, c).max(axis=(2, 4))
