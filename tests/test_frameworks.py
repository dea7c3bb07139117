"""Other layouts and boxes: Equinox models and linen partitioned params."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen
from flax.training.train_state import TrainState
from helpers import apply, reference_gc

import optax_gc


def _eqx_model():
    k1, k2 = jax.random.split(jax.random.key(0))
    return eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(1, 4, 3, key=k1),  # weight (4, 1, 3, 3), bias (4, 1, 1)
            eqx.nn.Lambda(lambda x: jnp.ravel(jax.nn.relu(x))),
            eqx.nn.Linear(4 * 4 * 4, 3, key=k2),  # weight (3, 64), bias (3,)
        ]
    )


def _eqx_grads(model):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 6, 6)).astype(np.float32))
    return eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(model)


def test_equinox_channels_first():
    model = _eqx_model()
    params = eqx.filter(model, eqx.is_inexact_array)
    grads = _eqx_grads(model)
    conv, dense = grads.layers[0], grads.layers[2]
    for tx in (
        optax_gc.centralize(layout="channels_first"),
        # An Equinox module is callable: as a spec it must still read as a tree.
        optax_gc.centralize(
            reduction_axes=optax_gc.default_reduction_axes(
                params, layout="channels_first"
            )
        ),
        optax_gc.centralize(
            layout="channels_first",
            mask=jax.tree.map(lambda p: p.ndim > 1, params),
        ),
    ):
        out = apply(tx, grads, params)
        np.testing.assert_allclose(
            out.layers[0].weight, reference_gc(conv.weight, (1, 2, 3)), atol=1e-5
        )
        np.testing.assert_allclose(
            out.layers[2].weight, reference_gc(dense.weight, (1,)), atol=1e-5
        )
        # The conv bias (4, 1, 1) has one fan-in entry per unit: GC would zero
        # its gradient (optax.centralize() does), so it is left alone.
        assert out.layers[0].bias is conv.bias
        assert out.layers[2].bias is dense.bias
    zeroed = apply(optax.centralize(), grads).layers[0].bias
    np.testing.assert_array_equal(zeroed, jnp.zeros_like(conv.bias))


def test_equinox_sgd_keeps_row_sums_fixed():
    model = _eqx_model()
    tx = optax.chain(optax_gc.centralize(layout="channels_first"), optax.sgd(0.1))
    state = tx.init(eqx.filter(model, eqx.is_inexact_array))
    start = model
    for _ in range(5):
        grads = _eqx_grads(model)
        updates, state = tx.update(
            grads, state, eqx.filter(model, eqx.is_inexact_array)
        )
        model = eqx.apply_updates(model, updates)
    for i, axes in ((0, (1, 2, 3)), (2, (1,))):
        w0, w1 = start.layers[i].weight, model.layers[i].weight
        np.testing.assert_allclose(w1.sum(axis=axes), w0.sum(axis=axes), atol=1e-5)
        assert float(jnp.abs(w1 - w0).max()) > 1e-3
    assert float(jnp.abs(model.layers[0].bias - start.layers[0].bias).max()) > 1e-3


class _Partitioned(linen.Module):
    @linen.compact
    def __call__(self, x):
        init = linen.with_partitioning(
            linen.initializers.lecun_normal(), (None, "model")
        )
        x = linen.relu(linen.Dense(8, kernel_init=init)(x))
        return linen.Dense(2, kernel_init=init)(x)


def test_linen_partitioned_boxes():
    model = _Partitioned()
    x = jnp.ones((4, 5))
    params = model.init(jax.random.key(0), x)["params"]
    assert isinstance(params["Dense_0"]["kernel"], linen.Partitioned)
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2))(params)
    spec = {
        "Dense_0": {"kernel": (0,), "bias": None},
        "Dense_1": {"kernel": (0,), "bias": None},
    }
    for tx in (
        optax_gc.centralize(),
        optax_gc.centralize(reduction_axes=spec),  # plain dict over boxes
        optax_gc.centralize(reduction_axes=optax_gc.default_reduction_axes(params)),
    ):
        out = apply(tx, grads, params)
        for name in ("Dense_0", "Dense_1"):
            g = grads[name]["kernel"].value
            np.testing.assert_allclose(
                out[name]["kernel"].value, reference_gc(g, (0,)), atol=1e-6
            )
            assert out[name]["kernel"].names == (None, "model")
            chex.assert_trees_all_equal(out[name]["bias"], grads[name]["bias"])
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.chain(optax_gc.centralize(), optax.sgd(0.1)),
    )
    state = jax.jit(lambda s, g: s.apply_gradients(grads=g))(state, grads)
    step = state.params["Dense_1"]["kernel"].value - params["Dense_1"]["kernel"].value
    np.testing.assert_allclose(step.sum(axis=0), 0.0, atol=1e-6)
