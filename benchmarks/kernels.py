"""Alternative ways to compute the per-leaf GC kernel, for measurement only.

``optax_gc`` computes each mean with ``jnp.mean`` (a reduction) and
subtracts it. The functions here are drop-in replacements for
``optax_gc._centralize.centralize_leaf`` that compute the fan-in sums some
other way; :func:`patched` swaps one in while a transform is traced, so the
benchmarks can time the same ``optax_gc.centralize()`` with each. They give
the same result up to summation order (``tests/test_benchmarks_smoke.py``).
See README.md here for what each measured.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_gc import _centralize
from optax_gc._layouts import fan_in_size, is_centralizable

Kernel = Callable[[Any, "tuple[int, ...] | None"], Any]

# The library's kernel, kept before any swap for the leaves the others skip.
library_kernel: Kernel = _centralize.centralize_leaf


def _leading(g: Any, axes: tuple[int, ...]) -> bool:
    """Whether ``axes`` are the leading block (a Flax kernel's fan-in)."""
    return axes == tuple(range(len(axes))) and len(axes) < g.ndim


def gemv(min_size: int = 0) -> Kernel:
    """Column sums as ``ones(fan-in) . g`` (a matrix-vector product).

    Used for real float32/float64 kernels of at least ``min_size`` entries
    whose fan-in axes lead; every other leaf takes the library kernel.
    """

    def kernel(g: Any, axes: tuple[int, ...] | None) -> Any:
        if (
            axes is None
            or not is_centralizable(g)
            or g.size < min_size
            or not _leading(g, axes)
            or not jnp.issubdtype(g.dtype, jnp.floating)
            or jnp.finfo(g.dtype).bits < 32
            or fan_in_size(g.shape, axes) == 1
        ):
            return library_kernel(g, axes)
        ones = jnp.ones(g.shape[: len(axes)], g.dtype)
        sums = jax.lax.dot_general(
            ones,
            g,
            ((tuple(range(len(axes))), axes), ((), ())),
            precision=jax.lax.Precision.HIGHEST,
        )
        return g - (sums / fan_in_size(g.shape, axes))[(None,) * len(axes)]

    return kernel


def full_mean(g: Any, axes: tuple[int, ...] | None) -> Any:
    """Not GC: ``g - mean(g)``, one full sum per leaf GC would centralize.

    The same reads and the same fused subtraction as GC, but the cheapest
    reduction XLA has (every entry into one number): the floor a reduction
    can reach through XLA, to measure GC's own reduction against.
    """
    if axes is None or not is_centralizable(g) or fan_in_size(g.shape, axes) == 1:
        return library_kernel(g, axes)
    return g - jnp.mean(g)


def trailing(*, rank3_only: bool) -> Kernel:
    """GC with the fan-in axes moved last before the reduce (``moveaxis``).

    The same means; written so that XLA:CPU's layout assignment can read a
    gradient that a dot produced in ``(out, in)`` order (the attention
    query/key/value kernels inside a train step) without first copying it
    into ``(in, out)`` order. With ``rank3_only``, only kernels of rank 3
    centralized over axis 0 (attention query/key/value) are rewritten.
    """

    def kernel(g: Any, axes: tuple[int, ...] | None) -> Any:
        if (
            axes is None
            or not is_centralizable(g)
            or fan_in_size(g.shape, axes) == 1
            or (rank3_only and (g.ndim != 3 or axes != (0,)))
            or jnp.finfo(g.dtype).bits < 32
        ):
            return library_kernel(g, axes)
        last = tuple(range(g.ndim - len(axes), g.ndim))
        moved = jnp.moveaxis(g, axes, last)
        mean = jnp.mean(moved, axis=last, keepdims=True)
        return g - jnp.moveaxis(mean, last, axes)

    return kernel


KERNELS: dict[str, Kernel] = {
    "gemv": gemv(),  # every leading-axes float32 kernel
    "gemv_1m": gemv(1 << 20),  # only kernels of >= 2**20 entries (4 MiB)
    "full": full_mean,  # the floor (not GC): one full mean per kernel
    "trailing": trailing(rank3_only=False),  # every kernel's fan-in moved last
    "trailing_qkv": trailing(rank3_only=True),  # attention q/k/v kernels only
}


@contextmanager
def _swapped(kernel: Kernel) -> Iterator[None]:
    # setattr: the module attribute is a function, the kernel any Kernel.
    setattr(_centralize, "centralize_leaf", kernel)  # noqa: B010
    try:
        yield
    finally:
        setattr(_centralize, "centralize_leaf", library_kernel)  # noqa: B010


def patched(
    tx: optax.GradientTransformationExtraArgs, kernel: Kernel
) -> optax.GradientTransformationExtraArgs:
    """``tx`` (an ``optax_gc.centralize()``) traced with ``kernel`` per leaf."""

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> Any:
        with _swapped(kernel):
            return tx.update(updates, state, params, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update)
