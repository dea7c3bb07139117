"""Checks of the options and hyperparameters, done when a transform is built.

A wrong argument is an error at construction that names it, never a
different result: a truthy string taken for ``conv_only=True``, a mask entry
``"no"`` taken for ``True``, a negative learning rate. The rules follow the
authors' and PyTorch's optimizers (``0 <= lr``, ``0 <= betas < 1``,
``0 <= eps``, ``0 <= weight_decay``, Nesterov needs a momentum).

Only concrete Python and NumPy numbers are range-checked. Schedules,
callables and JAX arrays (which ``optax.inject_hyperparams`` passes, traced
under ``jit``) are accepted as they are.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

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


def _unchecked(value: Any) -> bool:
    """Schedules, callables and JAX arrays: accepted, not range-checked."""
    return callable(value) or isinstance(value, jax.Array)


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
