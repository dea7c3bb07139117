"""centralize() everywhere a user puts an optax transformation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training.train_state import TrainState
from helpers import apply, random_tree, reference_gc

import optax_gc


def _grads(seed: int = 1):
    return random_tree(seed)


# --- optax.centralize and the layout rule ---------------------------------


def test_channels_first_equals_optax_centralize():
    tree = random_tree()
    ours = apply(optax_gc.centralize(layout="channels_first"), tree)
    theirs = apply(optax.centralize(), tree)
    # The head kernel (6, 1) read channels-first has one fan-in entry per unit:
    # optax zeroes its gradient; optax_gc leaves it alone. All else is equal.
    np.testing.assert_array_equal(theirs["head"]["kernel"], jnp.zeros((6, 1)))
    assert ours["head"]["kernel"] is tree["head"]["kernel"]
    del ours["head"], theirs["head"]
    chex.assert_trees_all_close(ours, theirs, atol=1e-7)


def test_why_the_default_differs_on_an_nnx_linear_kernel():
    model = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    g = grads["kernel"][...]
    assert g.shape == (5, 3)  # Flax: (in, out)
    ours = apply(optax_gc.centralize(), g)
    theirs = apply(optax.centralize(), g)
    # GC centres each output unit's fan-in vector: the columns.
    np.testing.assert_allclose(ours.mean(axis=0), 0.0, atol=1e-6)
    # optax.centralize() centres the rows instead (PyTorch layout): its column
    # means are untouched and nothing is centred per output unit.
    np.testing.assert_allclose(theirs.mean(axis=1), 0.0, atol=1e-6)
    assert np.abs(theirs.mean(axis=0)).max() > 1e-2
    np.testing.assert_allclose(
        theirs.mean(axis=0), g.mean(axis=0) - g.mean(), atol=1e-6
    )
    # On a Dense(1) head it is worse: every row has one entry, so it zeroes all.
    head = nnx.Linear(5, 1, rngs=nnx.Rngs(0))
    hg = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(head)["kernel"][...]
    np.testing.assert_array_equal(apply(optax.centralize(), hg), jnp.zeros((5, 1)))
    assert np.abs(apply(optax_gc.centralize(), hg)).max() > 1e-3


# --- placement in a chain -------------------------------------------------


@pytest.mark.standard_promotion
def test_ahead_of_an_optimizer_centralizes_the_gradient():
    params, grads = random_tree(0), _grads()
    tx = optax.chain(optax_gc.centralize(), optax.adam(1e-2))
    adam = optax.adam(1e-2)
    gc_grads = apply(optax_gc.centralize(), grads)
    state, ref_state = tx.init(params), adam.init(params)
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        ref, ref_state = adam.update(gc_grads, ref_state, params)
        chex.assert_trees_all_close(updates, ref, atol=1e-7)


@pytest.mark.standard_promotion
def test_after_an_optimizer_centralizes_the_step():
    params, grads = random_tree(0), _grads()
    tx = optax.chain(optax.adam(1e-2), optax_gc.centralize())
    updates = apply(tx, grads, params)
    for k in ("conv", "conv1d", "dense", "head"):
        u = updates[k]["kernel"]
        np.testing.assert_allclose(
            u.mean(axis=tuple(range(u.ndim - 1))), 0.0, atol=1e-8
        )
    raw = apply(optax.adam(1e-2), grads, params)
    chex.assert_trees_all_equal(updates["dense"]["bias"], raw["dense"]["bias"])


@pytest.mark.standard_promotion
def test_inside_multisteps():
    params = random_tree(0)
    micro = [_grads(s) for s in (1, 2, 3)]
    tx = optax.MultiSteps(
        optax.chain(optax_gc.centralize(), optax.sgd(0.1)), every_k_schedule=3
    )
    state = tx.init(params)
    for g in micro[:2]:
        updates, state = tx.update(g, state, params)
        chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, g))
    updates, state = jax.jit(tx.update)(micro[2], state, params)
    mean = jax.tree.map(lambda *g: sum(g) / 3, *micro)
    want = jax.tree.map(lambda g: -0.1 * g, apply(optax_gc.centralize(), mean))
    chex.assert_trees_all_close(updates, want, atol=1e-6)


def test_inject_hyperparams_chain_and_static_options():
    params, grads = random_tree(0), _grads()
    tx = optax.inject_hyperparams(
        lambda learning_rate: optax.chain(
            optax_gc.centralize(), optax.sgd(learning_rate)
        )
    )(learning_rate=0.1)
    state = tx.init(params)
    state.hyperparams["learning_rate"] = jnp.asarray(0.5)
    updates, state = jax.jit(tx.update)(grads, state, params)
    want = jax.tree.map(lambda g: -0.5 * g, apply(optax_gc.centralize(), grads))
    chex.assert_trees_all_close(updates, want, atol=1e-6)
    # centralize's own options are static: inject_hyperparams takes them too.
    gcc = optax.inject_hyperparams(optax_gc.centralize, static_args=("layout",))(
        conv_only=True, layout="channels_last"
    )
    chex.assert_trees_all_close(
        apply(gcc, grads), apply(optax_gc.centralize(conv_only=True), grads), atol=0
    )


def test_inside_masked_and_multi_transform():
    params, grads = random_tree(0), _grads()
    mask = {"conv": True, "conv1d": False, "dense": True, "head": False, "norm": False}
    out = apply(optax.masked(optax_gc.centralize(), mask), grads)
    chex.assert_trees_all_equal(out, apply(optax_gc.centralize(mask=mask), grads))
    labels = {k: ("gc" if v else "plain") for k, v in mask.items()}
    tx = optax.multi_transform(
        {
            "gc": optax.chain(optax_gc.centralize(), optax.sgd(1.0)),
            "plain": optax.sgd(1.0),
        },
        labels,
    )
    updates = apply(tx, grads, params)
    want = jax.tree.map(lambda g: -g, out)
    chex.assert_trees_all_close(updates, want, atol=1e-7)
    # A full-tree reduction_axes inside optax.masked: the masked-out parts
    # arrive as MaskedNode and are ignored.
    spec = optax_gc.default_reduction_axes(params)
    out2 = apply(optax.masked(optax_gc.centralize(reduction_axes=spec), mask), grads)
    chex.assert_trees_all_equal(out2, out)


def test_inside_apply_if_finite():
    params, grads = random_tree(0), _grads()
    tx = optax.apply_if_finite(optax.chain(optax_gc.centralize(), optax.sgd(1.0)), 2)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    chex.assert_trees_all_close(
        updates,
        jax.tree.map(lambda g: -g, apply(optax_gc.centralize(), grads)),
        atol=1e-7,
    )
    bad = {**grads, "head": {"kernel": grads["head"]["kernel"].at[0, 0].set(jnp.nan)}}
    updates, state = tx.update(bad, state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, bad))
    assert int(state.notfinite_count) == 1


# --- the contract optax checks on its own optimizers ------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_dtype_preserved_through_an_optimizer(dtype):
    params = jax.tree.map(lambda p: p.astype(dtype), random_tree(0))
    grads = jax.tree.map(lambda p: p.astype(dtype), _grads())
    tx = optax.chain(optax_gc.centralize(), optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    for tree in (updates, new):
        chex.assert_trees_all_equal_dtypes(tree, params)


@pytest.mark.standard_promotion
def test_stable_state_under_lax_cond():
    params, grads = random_tree(0), _grads()
    tx = optax.chain(optax_gc.centralize(), optax.adam(1e-3))
    state = tx.init(params)

    @jax.jit
    def step(pred, state):
        return jax.lax.cond(
            pred,
            lambda s: tx.update(grads, s, params),
            lambda s: (jax.tree.map(jnp.zeros_like, grads), s),
            state,
        )

    for pred in (True, False):
        _, new_state = step(pred, state)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)


def test_accepts_extra_args():
    params, grads = random_tree(0), _grads()
    tx = optax_gc.centralize()
    updates, _ = tx.update(grads, tx.init(params), params, value=jnp.float32(1.0))
    chex.assert_trees_all_equal(updates, apply(tx, grads))
    chained = optax.chain(optax_gc.centralize(), optax.sgd(0.1))
    updates, _ = chained.update(
        grads, chained.init(params), params, value=jnp.float32(1.0)
    )
    chex.assert_trees_all_close(
        updates, jax.tree.map(lambda g: -0.1 * g, apply(tx, grads)), atol=1e-7
    )


def test_eval_shape_and_tree_map_params():
    params, grads = random_tree(0), _grads()
    tx = optax.chain(optax_gc.centralize(), optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    shapes = jax.eval_shape(lambda g, s: tx.update(g, s, params)[0], grads, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(shapes, grads)
    # tree_map_params reaches the momentum buffer through the chain.
    doubled = optax.tree_map_params(tx, lambda p: p * 2, state)
    chex.assert_trees_all_close(
        doubled[1][0].trace, jax.tree.map(lambda t: t * 2, state[1][0].trace)
    )


def test_reduction_axes_through_inject_hyperparams_must_be_static():
    grads = {"q": _grads()["conv1d"]["kernel"]}  # (3, 4, 5): fan-in axis 0 only
    make = optax.inject_hyperparams(
        optax_gc.centralize, static_args=("reduction_axes",)
    )
    tx = make(reduction_axes={"q": (0,)})
    out = jax.jit(lambda g: tx.update(g, tx.init(g))[0])(grads)
    np.testing.assert_allclose(out["q"], reference_gc(grads["q"], (0,)), atol=1e-6)
    # Not static: inject_hyperparams turns the int into a traced array.
    tx = optax.inject_hyperparams(optax_gc.centralize)(reduction_axes=0)
    with pytest.raises(ValueError, match=r"list reduction_axes in static_args"):
        jax.jit(lambda g: tx.update(g, tx.init(g))[0])(grads["q"])


def test_jit_and_vmap():
    members = [_grads(s) for s in (1, 2, 3)]
    stacked = jax.tree.map(lambda *g: jnp.stack(g), *members)
    tx = optax_gc.centralize()
    batched = jax.jit(jax.vmap(lambda g: tx.update(g, optax.EmptyState())[0]))(stacked)
    for i, g in enumerate(members):
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), apply(tx, g), atol=1e-6
        )


# --- Flax -----------------------------------------------------------------


class _NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.norm = nnx.LayerNorm(4, rngs=rngs)
        self.dense = nnx.Linear(4 * 6 * 6, 3, rngs=rngs)

    def __call__(self, x):
        x = self.norm(nnx.relu(self.conv(x)))
        return self.dense(x.reshape(x.shape[0], -1))


def _batch():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 6, 6, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 3, size=8).astype(np.int32))
    return x, y


def _loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def test_nnx_optimizer_applies_gc_to_the_gradient():
    x, y = _batch()
    model = _NNXNet(nnx.Rngs(0))
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(
        model, optax.chain(optax_gc.centralize(), optax.sgd(0.1)), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, optimizer, x, y):
        grads = nnx.grad(lambda m: _loss(m(x), y))(model)
        optimizer.update(model, grads)
        return grads

    grads = nnx.as_pure(step(model, optimizer, x, y))
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    delta = jax.tree.map(lambda a, b: (a - b) / -0.1, after, before)
    g = grads["conv"]["kernel"]
    np.testing.assert_allclose(
        delta["conv"]["kernel"], reference_gc(g, (0, 1, 2)), atol=1e-5
    )
    g = grads["dense"]["kernel"]
    np.testing.assert_allclose(
        delta["dense"]["kernel"], reference_gc(g, (0,)), atol=1e-5
    )
    for name, p in (("conv", "bias"), ("dense", "bias"), ("norm", "scale")):
        np.testing.assert_allclose(delta[name][p], grads[name][p], atol=1e-5)


def _nnx_sgd_step(reduction_axes):
    """The params of a fresh _NNXNet after one GC + SGD step in nnx.Optimizer."""
    x, y = _batch()
    model = _NNXNet(nnx.Rngs(0))
    tx = optax.chain(optax_gc.centralize(reduction_axes=reduction_axes), optax.sgd(0.1))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    optimizer.update(model, nnx.grad(lambda m: _loss(m(x), y))(model))
    return nnx.as_pure(nnx.state(model, nnx.Param))


def test_nnx_optimizer_with_a_plain_dict_reduction_axes():
    # A spec written as a plain dict fits the nnx.State the optimizer passes:
    # matching is by key path.
    spec = {
        "conv": {"kernel": (0, 1, 2), "bias": None},
        "norm": None,
        "dense": {"kernel": (0,), "bias": None},
    }
    chex.assert_trees_all_close(_nnx_sgd_step(spec), _nnx_sgd_step(None), atol=1e-7)


def test_nnx_state_with_variables_and_its_default_axes():
    # nnx.grad returns Variables (key paths like ['kernel'].value); a plain
    # dict spec and default_reduction_axes(nnx.state(...)) both fit it, and the
    # latter also fits the pure State that nnx.Optimizer passes.
    x, y = _batch()
    model = _NNXNet(nnx.Rngs(0))
    grads = nnx.grad(lambda m: _loss(m(x), y))(model)
    spec = {
        "conv": {"kernel": (0, 1, 2), "bias": None},
        "norm": None,
        "dense": {"kernel": (0,), "bias": None},
    }
    boxed_spec = optax_gc.default_reduction_axes(nnx.state(model, nnx.Param))
    want = apply(optax_gc.centralize(), nnx.as_pure(grads))
    for reduction_axes in (spec, boxed_spec):
        out = apply(optax_gc.centralize(reduction_axes=reduction_axes), grads)
        chex.assert_trees_all_close(nnx.as_pure(out), want, atol=1e-7)
    chex.assert_trees_all_close(
        _nnx_sgd_step(boxed_spec), _nnx_sgd_step(None), atol=1e-7
    )


def test_nnx_optimizer_with_a_plain_dict_mask():
    x, y = _batch()
    model = _NNXNet(nnx.Rngs(0))
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    mask = {"conv": False, "norm": False, "dense": {"kernel": True, "bias": False}}
    tx = optax.chain(optax_gc.centralize(mask=mask), optax.sgd(1.0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = nnx.grad(lambda m: _loss(m(x), y))(model)
    optimizer.update(model, grads)
    grads = nnx.as_pure(grads)
    after = nnx.as_pure(nnx.state(model, nnx.Param))
    step = jax.tree.map(lambda a, b: b - a, after, before)
    np.testing.assert_allclose(
        step["dense"]["kernel"], reference_gc(grads["dense"]["kernel"], (0,)), atol=1e-6
    )
    np.testing.assert_allclose(
        step["conv"]["kernel"], grads["conv"]["kernel"], atol=1e-6
    )


class _LinenNet(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(4, (3, 3), padding="VALID")(x))
        return linen.Dense(3)(x.reshape(x.shape[0], -1))


def test_linen_train_state_applies_gc_to_the_gradient():
    x, y = _batch()
    model = _LinenNet()
    params = model.init(jax.random.key(0), x)["params"]
    state = TrainState.create(
        apply_fn=model.apply,
        params=params,
        tx=optax.chain(optax_gc.centralize(), optax.sgd(0.1)),
    )

    @jax.jit
    def step(state):
        grads = jax.grad(lambda p: _loss(state.apply_fn({"params": p}, x), y))(
            state.params
        )
        return state.apply_gradients(grads=grads), grads

    new, grads = step(state)
    delta = jax.tree.map(lambda a, b: (a - b) / -0.1, new.params, params)
    for name, axes in (("Conv_0", (0, 1, 2)), ("Dense_0", (0,))):
        g = grads[name]["kernel"]
        np.testing.assert_allclose(
            delta[name]["kernel"], reference_gc(g, axes), atol=1e-5
        )
        np.testing.assert_allclose(delta[name]["bias"], grads[name]["bias"], atol=1e-5)
