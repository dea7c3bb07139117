"""optax-gc: Gradient Centralization for JAX, as optax transformations."""

import importlib.metadata

from ._centralize import centralize as centralize
from ._layouts import default_reduction_axes as default_reduction_axes

__version__ = importlib.metadata.version("optax-gc")

__all__ = [
    "centralize",
    "default_reduction_axes",
]
