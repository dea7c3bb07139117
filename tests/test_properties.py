"""Projection properties of GC over random shapes and axes (hypothesis)."""

import os

import chex
import jax.numpy as jnp
import numpy as np
import optax
from helpers import apply, enable_x64, fan_in_size, reference_gc
from hypothesis import given, settings
from hypothesis import strategies as st

import optax_gc


@st.composite
def shapes_and_axes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    ndim = len(shape)
    axes = draw(
        st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
    )
    # Half the time, spell an axis negatively: the result must not change.
    signs = draw(st.lists(st.booleans(), min_size=len(axes), max_size=len(axes)))
    spelled = tuple(a - ndim if neg else a for a, neg in zip(axes, signs, strict=True))
    seed = draw(st.integers(0, 2**31 - 1))
    return shape, spelled, seed


def _gc(x, axes):
    return apply(optax_gc.centralize(reduction_axes=axes), x)


def _normal(shape, seed, k=0):
    rng = np.random.default_rng([seed, k])
    return rng.normal(size=shape)


# Deterministic examples in CI (CI=true), fresh ones on developers' machines.
settings.register_profile(
    "optax_gc", max_examples=60, deadline=None, derandomize=bool(os.environ.get("CI"))
)
settings.load_profile("optax_gc")


@given(shapes_and_axes())
def test_properties_in_float64(case):
    shape, axes, seed = case
    with enable_x64():
        g, h = (jnp.asarray(_normal(shape, seed, k)) for k in (0, 1))
        if fan_in_size(shape, axes) == 1:
            # One entry per unit: GC would zero the gradient; it is left alone.
            assert _gc(g, axes) is g
            return
        a, b = 1.7, -0.3
        pg = _gc(g, axes)
        norm = np.sqrt(np.sum(np.asarray(g) ** 2)) + 1.0
        # Equal to the unfold-to-(M, N) reference.
        np.testing.assert_allclose(pg, reference_gc(g, axes), rtol=1e-12, atol=1e-13)
        # Zero mean over the reduction axes, one mean per remaining index.
        np.testing.assert_allclose(np.mean(pg, axis=axes), 0.0, atol=1e-13 * norm)
        # Idempotent: P(P g) = P g.
        np.testing.assert_allclose(_gc(pg, axes), pg, rtol=1e-12, atol=1e-13)
        # Linear: P(a g + b h) = a P g + b P h.
        np.testing.assert_allclose(
            _gc(a * g + b * h, axes), a * pg + b * _gc(h, axes), rtol=1e-11, atol=1e-12
        )
        # Orthogonal: <P g, g - P g> = 0, and ||P g|| <= ||g||.
        assert abs(float(jnp.vdot(pg, g - pg))) <= 1e-12 * norm**2
        assert float(jnp.sum(pg**2)) <= float(jnp.sum(g**2)) * (1 + 1e-12)


@given(shapes_and_axes())
def test_float32_matches_reference(case):
    shape, axes, seed = case
    g = jnp.asarray(_normal(shape, seed).astype(np.float32))
    out = _gc(g, axes)
    if fan_in_size(shape, axes) == 1:
        assert out is g
        return
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, reference_gc(g, axes), rtol=1e-5, atol=1e-5)


@given(shapes_and_axes())
def test_channels_first_equals_optax_centralize(case):
    shape, _, seed = case
    g = jnp.asarray(_normal(shape, seed).astype(np.float32))
    ours = apply(optax_gc.centralize(layout="channels_first"), g)
    theirs = apply(optax.centralize(), g)
    if len(shape) >= 2 and fan_in_size(shape, tuple(range(1, len(shape)))) == 1:
        # The one difference: optax zeroes a gradient whose fan-in has a single
        # entry (an Equinox conv bias (out, 1, 1), a Linear(1, n) weight).
        assert ours is g
        np.testing.assert_array_equal(theirs, jnp.zeros_like(g))
    else:
        chex.assert_trees_all_close(ours, theirs, rtol=1e-6, atol=1e-6)


@given(shapes_and_axes())
def test_layout_rules_are_their_axes(case):
    shape, _, seed = case
    g = jnp.asarray(_normal(shape, seed).astype(np.float32))
    ndim = len(shape)
    last = apply(optax_gc.centralize(), g)
    first = apply(optax_gc.centralize(layout="channels_first"), g)
    for out, axes in ((last, tuple(range(ndim - 1))), (first, tuple(range(1, ndim)))):
        if ndim < 2 or fan_in_size(shape, axes) == 1:
            assert out is g
        else:
            np.testing.assert_allclose(out, reference_gc(g, axes), atol=1e-5)
