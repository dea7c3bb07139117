"""optax-gc: Gradient Centralization for JAX, as optax transformations."""

import importlib.metadata

from ._centralize import centralize as centralize
from ._layouts import default_reduction_axes as default_reduction_axes
from ._recipes import adagrad as adagrad
from ._recipes import adam as adam
from ._recipes import adamax as adamax
from ._recipes import adamaxw as adamaxw
from ._recipes import adamw as adamw
from ._recipes import lamb as lamb
from ._recipes import lion as lion
from ._recipes import nadam as nadam
from ._recipes import nadamw as nadamw
from ._recipes import radam as radam
from ._recipes import rmsprop as rmsprop
from ._recipes import sgd as sgd
from ._recipes import sgdw as sgdw

__version__ = importlib.metadata.version("optax-gc")

__all__ = [
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "centralize",
    "default_reduction_axes",
    "lamb",
    "lion",
    "nadam",
    "nadamw",
    "radam",
    "rmsprop",
    "sgd",
    "sgdw",
]
