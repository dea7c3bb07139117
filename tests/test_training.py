"""The paper's weight-space property on real Flax models and real data.

With plain SGD and GC, every update of a kernel has zero sum over the fan-in
axes, so each output unit's fan-in weight sum stays where it was initialised
while the weights themselves move (Yong et al. 2020, Sec. 3.2).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from flax.training.train_state import TrainState
from sklearn.datasets import load_digits

import optax_gc

STEPS = 25
LR = 0.1


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1)
    y = data.target.astype(np.int32)
    return jnp.asarray(x[:512]), jnp.asarray(y[:512])


def _batches(x, y, batch=64):
    for i in range(STEPS):
        j = (i * batch) % (x.shape[0] - batch)
        yield x[j : j + batch], y[j : j + batch]


def _loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _fan_in_sums(params):
    """Each kernel's per-output-unit sum over every axis but the last."""
    return {
        "/".join(str(k.key) for k in path): leaf.sum(axis=tuple(range(leaf.ndim - 1)))
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if leaf.ndim >= 2
    }


def _check_weight_space(start, end, *, gc: bool, first_loss, last_loss):
    s0, s1 = _fan_in_sums(start), _fan_in_sums(end)
    assert len(s0) == 3  # two convs and the dense head
    for name in s0:
        moved = float(jnp.abs(s1[name] - s0[name]).max())
        if gc:
            assert moved < 5e-6, (name, moved)
        else:
            assert moved > 1e-2, (name, moved)
    # The weights themselves moved, and so did every bias: GC leaves them be.
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(end), strict=True):
        assert float(jnp.abs(a - b).max()) > 1e-3
    assert last_loss < first_loss


class _NNXCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, kernel_size=(3, 3), rngs=rngs)
        self.head = nnx.Linear(8 * 4 * 4, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.conv1(x))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return self.head(x.reshape(x.shape[0], -1))


@pytest.mark.slow
@pytest.mark.parametrize("gc", [True, False])
def test_nnx_sgd_keeps_fan_in_sums_fixed(digits, gc):
    model = _NNXCNN(nnx.Rngs(0))
    tx = optax.chain(optax_gc.centralize(), optax.sgd(LR)) if gc else optax.sgd(LR)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    start = nnx.as_pure(nnx.state(model, nnx.Param))
    losses = [float(step(model, optimizer, x, y)) for x, y in _batches(*digits)]
    end = nnx.as_pure(nnx.state(model, nnx.Param))
    _check_weight_space(start, end, gc=gc, first_loss=losses[0], last_loss=losses[-1])


class _LinenCNN(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = linen.relu(linen.Conv(8, (3, 3))(x))
        x = linen.max_pool(linen.relu(linen.Conv(8, (3, 3))(x)), (2, 2), strides=(2, 2))
        return linen.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.slow
@pytest.mark.parametrize("gc", [True, False])
def test_linen_sgd_keeps_fan_in_sums_fixed(digits, gc):
    x0, _ = digits
    model = _LinenCNN()
    params = model.init(jax.random.key(0), x0[:1])["params"]
    tx = optax.chain(optax_gc.centralize(), optax.sgd(LR)) if gc else optax.sgd(LR)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state, x, y):
        def loss_fn(p):
            return _loss(state.apply_fn({"params": p}, x), y)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), loss

    losses = []
    for x, y in _batches(*digits):
        state, loss = step(state, x, y)
        losses.append(float(loss))
    _check_weight_space(
        params, state.params, gc=gc, first_loss=losses[0], last_loss=losses[-1]
    )
