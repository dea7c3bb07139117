"""The article's CNN in Flax linen, the twin of ``examples/nnx_cnn/models.py``."""

from __future__ import annotations

import jax
from flax import linen as nn

from examples.nnx_cnn.models import max_pool


class CNN(nn.Module):
    """Conv 16/32/64 (3x3, each followed by 2x2 max-pooling), dropout, Dense 512.

    The same network as the NNX example's ``CNN``, layer for layer and with
    the same parameter names (``conv1`` .. ``conv3``, ``dense1``, ``dense2``),
    so parameters copy from one to the other. The convolutions use ``SAME``
    padding and an axis already down to 1 is not pooled, so it fits 8x8
    digits as well as 28x28 images; the head gives ``num_classes`` logits.

    Attributes:
        num_classes: Number of classes.
        dropout_rate: Dropout before and after the Dense 512 layer.

    Example:
        >>> import jax
        >>> import jax.numpy as jnp
        >>> model = CNN(num_classes=10)
        >>> x = jnp.ones((2, 8, 8, 1))
        >>> params = model.init(jax.random.key(0), x, train=False)["params"]
        >>> model.apply({"params": params}, x, train=False).shape
        (2, 10)
    """

    num_classes: int
    dropout_rate: float = 0.5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """Logits for images ``(batch, height, width, channels)``.

        Args:
            x: The images.
            train: Dropout on (needs a ``"dropout"`` rng) or off.

        Returns:
            ``(batch, num_classes)`` logits.
        """
        for i, features in enumerate((16, 32, 64), start=1):
            x = nn.relu(nn.Conv(features, kernel_size=(3, 3), name=f"conv{i}")(x))
            # 2x2 pools; an axis down to 1 (small inputs) is left as it is.
            window = (_window(x.shape[1]), _window(x.shape[2]))
            x = max_pool(x, window)
        dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
        x = dropout(x.reshape(x.shape[0], -1))
        x = dropout(nn.relu(nn.Dense(512, name="dense1")(x)))
        return nn.Dense(self.num_classes, name="dense2")(x)


def _window(size: int) -> int:
    """Pooling window along an axis: 2, or 1 once the axis is down to 1."""
    return 2 if size > 1 else 1
