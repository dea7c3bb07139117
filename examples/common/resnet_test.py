"""The ResNet: its structure, BN state kept out of the optimizer, GC on kernels only."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_gc
from examples.common import diagnostics
from examples.common.resnet import ResNet


def test_resnet20_structure():
    model = nnx.eval_shape(lambda: ResNet((32, 32, 3), 10, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    kernels = diagnostics.gc_axes(params)
    three_by_three = [
        k for k in kernels if k.endswith("kernel") and "shortcut" not in k
    ]
    # ResNet-20: 19 3x3 convs and the head are its 20 weighted layers; two 1x1
    # projection shortcuts where the width doubles.
    assert model.depth == 20 and len(three_by_three) == 20
    assert [k for k in kernels if "shortcut" in k] == [
        "blocks/3/shortcut/layers/0/kernel",
        "blocks/6/shortcut/layers/0/kernel",
    ]
    assert params["blocks"][8]["conv2"]["kernel"].shape == (3, 3, 64, 64)
    assert params["head"]["kernel"].shape == (64, 10)
    n = sum(np.size(p) for p in jax.tree.leaves(params))
    assert 270_000 < n < 280_000  # He et al.'s ResNet-20: 0.27M


def tiny_resnet(num_classes: int = 10) -> ResNet:
    """A ResNet-8 of width 4 for 8x8 images, initialised by one compiled program.

    Built eagerly, each new kernel shape compiles XLA's random-number code
    (about 1.5 s each on 2 CPUs); one program without backend optimization
    takes about 1 s.
    """

    def build():
        return ResNet((8, 8, 1), num_classes, blocks=1, width=4, rngs=nnx.Rngs(0))

    graphdef = nnx.graphdef(nnx.eval_shape(build))
    init = jax.jit(lambda: nnx.state(build())).lower()
    state = init.compile(compiler_options={"xla_backend_optimization_level": "0"})()
    return nnx.merge(graphdef, state)


def test_bn_statistics_are_not_params_and_gc_touches_kernels_only():
    model = tiny_resnet()
    tx = optax_gc.sgd(0.1, momentum=0.9, weight_decay=5e-4)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    params0 = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats0 = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1))
    y = jnp.arange(16) % 10

    @nnx.jit
    def train_step(model, optimizer):
        def loss_fn(model):
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = nnx.grad(loss_fn)(model)
        optimizer.update(model, grads)
        return grads

    model.train()
    for _ in range(3):
        grads = train_step(model, optimizer)
    assert not jax.tree.leaves(nnx.state(grads, nnx.BatchStat))  # no BN grads
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    # Train mode updated the running statistics (not the optimizer: they are
    # not in its state).
    assert (
        float(jnp.abs(stats["stem_bn"]["mean"] - stats0["stem_bn"]["mean"]).max()) > 0
    )
    momentum = nnx.to_pure_dict(nnx.state(optimizer.opt_state))
    assert "mean" not in str(jax.tree_util.tree_structure(momentum))
    # GC(g + wd * w) with SGD: every kernel's fan-in sums stay, decay included.
    changes = diagnostics.kernel_changes(params0, params, diagnostics.gc_axes(params0))
    assert len(changes["fan_in_sum"]) == 10
    assert max(changes["fan_in_sum"].values()) < 1e-6
    assert min(changes["weight"].values()) > 1e-3
    # BN's scale and bias (rank 1) are not centralized: their steps have a mean.
    step = np.asarray(params["stem_bn"]["scale"]) - np.asarray(
        params0["stem_bn"]["scale"]
    )
    assert abs(step.mean()) > 1e-4


def test_eval_mode_uses_running_statistics():
    model = tiny_resnet(3)
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))

    @nnx.jit
    def first_logits(model, x):  # of x[0], alone with x[2] and with the batch
        return model(x[::2])[0], model(x)[0]

    model.eval()
    # Running averages: an image's logits do not depend on the rest of the batch.
    alone, within = first_logits(model, x)
    np.testing.assert_allclose(alone, within, rtol=1e-5, atol=1e-6)
    model.train()  # batch statistics: they do
    alone, within = first_logits(model, x)
    assert float(jnp.abs(alone - within).max()) > 1e-4


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match=r"blocks >= 1 and width >= 1, got blocks=0"):
        ResNet((8, 8, 1), 10, blocks=0, rngs=nnx.Rngs(0))
