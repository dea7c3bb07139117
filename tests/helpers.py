"""Shared test helpers: an independent NumPy reference and small trees."""

from typing import Any

import jax
import numpy as np
import optax


def reference_gc(g: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """GC by the paper's unfolding, in float64 NumPy.

    Moves the fan-in ``axes`` to the front, unfolds the array to a matrix W of
    shape (M, N) with one column per output unit, subtracts each column's
    mean and folds back. Shares no code with ``optax_gc``.
    """
    g = np.asarray(g, dtype=np.float64)
    axes = tuple(sorted(a % g.ndim for a in axes))
    rest = tuple(a for a in range(g.ndim) if a not in axes)
    moved = np.transpose(g, axes + rest)
    m = int(np.prod([g.shape[a] for a in axes]))
    w = moved.reshape(m, -1)
    w = w - w.sum(axis=0, keepdims=True) / m
    back = np.argsort(axes + rest)
    return np.transpose(w.reshape(moved.shape), back)


def fan_in_size(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    """How many entries each output unit averages over (M)."""
    return int(np.prod([shape[a] for a in axes]))


def enable_x64() -> Any:
    """A context with 64-bit types on: ``jax.enable_x64`` or, on the oldest
    jax we support, its earlier home in ``jax.experimental``."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


def apply(tx: optax.GradientTransformation, updates: Any, params: Any = None) -> Any:
    """One update of ``tx`` from a fresh state."""
    state = tx.init(updates if params is None else params)
    return tx.update(updates, state, params)[0]


def random_tree(seed: int = 0) -> dict[str, Any]:
    """A Flax-layout parameter tree: conv, dense, head, bias and norm scale."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> jax.Array:
        return jax.numpy.asarray(rng.normal(size=shape).astype(np.float32))

    return {
        "conv": {"kernel": normal(3, 3, 2, 4), "bias": normal(4)},
        "conv1d": {"kernel": normal(3, 4, 5)},
        "dense": {"kernel": normal(20, 6), "bias": normal(6)},
        "head": {"kernel": normal(6, 1)},
        "norm": {"scale": normal(6)},
    }


def assert_leaves_close(
    got: dict[str, Any],
    want: dict[str, Any],
    *,
    label: str,
    step: int,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> None:
    """Every leaf of a flat dict of arrays close to the reference's."""
    for key in want:
        np.testing.assert_allclose(
            got[key],
            want[key],
            rtol=rtol,
            atol=atol,
            err_msg=f"{label}: {key} after step {step}",
        )
