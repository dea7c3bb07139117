"""optax_gc.flax: fan-in axes from the layers of Flax NNX and linen models.

Every layer type is checked three ways: its axes equal hand-derived ones;
they equal the axes an independent oracle reads off the layer's Jacobian
(which kernel entries each output unit depends on); and after `centralize`
with them, a real gradient has zero mean over exactly those axes per output
unit (per head for attention) while the leaves given `None` are untouched.
"""

import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training.train_state import TrainState
from helpers import apply, reference_gc

import optax_gc
from optax_gc.flax import (
    UnknownLayerWarning,
    einsum_fan_in_axes,
    fan_in_axes,
    linen_fan_in_axes,
)


def _rand(seed, *shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _ids(seed, *shape, high=10):
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, size=shape))


# (name, layer factory, example input, hand-derived axes of the layer's params,
#  axes of the output that index output units, for the Jacobian oracle)
NNX_CASES = [
    (
        "Linear",
        lambda r: nnx.Linear(6, 4, rngs=r),
        _rand(0, 3, 6),
        {"kernel": (0,), "bias": None},
        (1,),
    ),
    # kernel (3, 4, 2, 5): contracts input axes 1 and 3, features (2, 5)
    (
        "LinearGeneral_axes",
        lambda r: nnx.LinearGeneral((3, 4), (2, 5), axis=(1, -1), rngs=r),
        _rand(1, 2, 3, 7, 4),
        {"kernel": (0, 1), "bias": None},
        (2, 3),
    ),
    # kernel (2, 3, 4): axis 0 is a batch axis, one weight set per batch row
    (
        "LinearGeneral_batch",
        lambda r: nnx.LinearGeneral(3, 4, batch_axis={0: 2}, rngs=r),
        _rand(2, 2, 5, 3),
        {"kernel": (1,), "bias": None},
        (0, 2),
    ),
    (
        "Conv",
        lambda r: nnx.Conv(3, 4, kernel_size=(3, 3), rngs=r),
        _rand(3, 2, 5, 5, 3),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    # kernel (3, 2, 6): each output channel sees in / groups = 2 channels
    (
        "Conv_grouped",
        lambda r: nnx.Conv(4, 6, kernel_size=(3,), feature_group_count=2, rngs=r),
        _rand(4, 2, 7, 4),
        {"kernel": (0, 1), "bias": None},
        (2,),
    ),
    # kernel (3, 3, 1, 8): depthwise, fan-in is the 3x3 window
    (
        "Conv_depthwise",
        lambda r: nnx.Conv(4, 8, kernel_size=(3, 3), feature_group_count=4, rngs=r),
        _rand(5, 2, 5, 5, 4),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    (
        "ConvTranspose",
        lambda r: nnx.ConvTranspose(3, 4, kernel_size=(3, 3), rngs=r),
        _rand(6, 2, 4, 4, 3),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    # transpose_kernel=True stores (k, k, out, in): the output axis is 2
    (
        "ConvTranspose_transposed",
        lambda r: nnx.ConvTranspose(
            3, 4, kernel_size=(3, 3), transpose_kernel=True, rngs=r
        ),
        _rand(7, 2, 4, 4, 3),
        {"kernel": (0, 1, 3), "bias": None},
        (3,),
    ),
    # kernel (d=6, h=2, k=3): d is contracted
    (
        "Einsum",
        lambda r: nnx.Einsum("btd,dhk->bthk", (6, 2, 3), (2, 3), rngs=r),
        _rand(8, 2, 5, 6),
        {"kernel": (0,), "bias": None},
        (2, 3),
    ),
    # kernel (h=2, d=4, k=5): h is shared with the input, one matrix per head
    (
        "Einsum_per_head",
        lambda r: nnx.Einsum("bhd,hdk->bhk", (2, 4, 5), (2, 5), rngs=r),
        _rand(9, 3, 2, 4),
        {"kernel": (1,), "bias": None},
        (1, 2),
    ),
    (
        "MultiHeadAttention",
        lambda r: nnx.MultiHeadAttention(
            num_heads=2,
            in_features=8,
            qkv_features=6,
            out_features=5,
            decode=False,
            rngs=r,
        ),
        _rand(10, 2, 5, 8),
        {k: {"kernel": (0,), "bias": None} for k in ("query", "key", "value")}
        | {"out": {"kernel": (0, 1), "bias": None}},
        None,
    ),
    (
        "Embed",
        lambda r: nnx.Embed(10, 4, rngs=r),
        _ids(11, 2, 5),
        {"embedding": None},
        None,
    ),
    (
        "LayerNorm",
        lambda r: nnx.LayerNorm(6, rngs=r),
        _rand(12, 3, 6),
        {"scale": None, "bias": None},
        None,
    ),
    (
        "RMSNorm",
        lambda r: nnx.RMSNorm(6, rngs=r),
        _rand(13, 3, 6),
        {"scale": None},
        None,
    ),
    (
        "BatchNorm",
        lambda r: nnx.BatchNorm(6, use_running_average=False, rngs=r),
        _rand(14, 3, 6),
        {"scale": None, "bias": None},
        None,
    ),
    (
        "GroupNorm",
        lambda r: nnx.GroupNorm(6, num_groups=2, rngs=r),
        _rand(15, 3, 6),
        {"scale": None, "bias": None},
        None,
    ),
    # each LoRA factor is a linear map with its own output units
    (
        "LoRA",
        lambda r: nnx.LoRA(6, 2, 4, b_initializer=nnx.initializers.normal(), rngs=r),
        _rand(16, 3, 6),
        {"lora_a": (0,), "lora_b": (0,)},
        None,
    ),
    (
        "LoRALinear",
        lambda r: nnx.LoRALinear(
            6, 4, lora_rank=2, b_initializer=nnx.initializers.normal(), rngs=r
        ),
        _rand(17, 3, 6),
        {"kernel": (0,), "bias": None, "lora": {"lora_a": (0,), "lora_b": (0,)}},
        None,
    ),
]


class _EinsumAtCall(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Einsum((2, 4, 5), name="e")(x, "bhd,hdk->bhk")


# linen: (name, module, example input, hand-derived axes, output unit axes)
LINEN_CASES = [
    ("Dense", nn.Dense(4), _rand(20, 3, 6), {"kernel": (0,), "bias": None}, (1,)),
    (
        "DenseGeneral_axes",
        nn.DenseGeneral((2, 5), axis=(1, -1)),
        _rand(21, 2, 3, 7, 4),
        {"kernel": (0, 1), "bias": None},
        (2, 3),
    ),
    (
        "DenseGeneral_batch",
        nn.DenseGeneral(4, batch_dims=(0,)),
        _rand(22, 2, 5, 3),
        {"kernel": (1,), "bias": None},
        (0, 2),
    ),
    (
        "Conv",
        nn.Conv(4, (3, 3)),
        _rand(23, 2, 5, 5, 3),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    (
        "Conv_grouped",
        nn.Conv(6, (3,), feature_group_count=2),
        _rand(24, 2, 7, 4),
        {"kernel": (0, 1), "bias": None},
        (2,),
    ),
    (
        "Conv_depthwise",
        nn.Conv(8, (3, 3), feature_group_count=4),
        _rand(25, 2, 5, 5, 4),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    # kernel (5, 3 * 4, 6): one weight vector per output pixel and channel
    (
        "ConvLocal",
        nn.ConvLocal(6, (3,), padding="VALID"),
        _rand(26, 2, 7, 4),
        {"kernel": (1,), "bias": None},
        (1, 2),
    ),
    (
        "ConvTranspose",
        nn.ConvTranspose(4, (3, 3)),
        _rand(27, 2, 4, 4, 3),
        {"kernel": (0, 1, 2), "bias": None},
        (3,),
    ),
    (
        "ConvTranspose_transposed",
        nn.ConvTranspose(4, (3, 3), transpose_kernel=True),
        _rand(28, 2, 4, 4, 3),
        {"kernel": (0, 1, 3), "bias": None},
        (3,),
    ),
    (
        "Einsum",
        nn.Einsum((6, 2, 3), "btd,dhk->bthk"),
        _rand(29, 2, 5, 6),
        {"kernel": (0,), "bias": None},
        (2, 3),
    ),
    (
        "Einsum_equation_at_call",
        _EinsumAtCall(),
        _rand(30, 3, 2, 4),
        {"e": {"kernel": (1,), "bias": None}},
        None,
    ),
    (
        "MultiHeadDotProductAttention",
        nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=6, out_features=5),
        _rand(31, 2, 5, 8),
        {k: {"kernel": (0,), "bias": None} for k in ("query", "key", "value")}
        | {"out": {"kernel": (0, 1), "bias": None}},
        None,
    ),
    ("Embed", nn.Embed(10, 4), _ids(32, 2, 5), {"embedding": None}, None),
    ("LayerNorm", nn.LayerNorm(), _rand(33, 3, 6), {"scale": None, "bias": None}, None),
    ("RMSNorm", nn.RMSNorm(), _rand(34, 3, 6), {"scale": None}, None),
    (
        "BatchNorm",
        nn.BatchNorm(use_running_average=False),
        _rand(35, 3, 6),
        {"scale": None, "bias": None},
        None,
    ),
    (
        "GroupNorm",
        nn.GroupNorm(num_groups=2),
        _rand(36, 3, 6),
        {"scale": None, "bias": None},
        None,
    ),
]


def _case_ids(cases):
    return [c[0] for c in cases]


def _nnx_grads(layer, x):
    """A real gradient of a random projection of the layer's output."""
    r = _rand(99, *layer(x).shape)
    grads = nnx.grad(lambda m: jnp.sum(m(x) * r))(layer)
    return nnx.to_pure_dict(nnx.state(grads, nnx.Param))


def _linen_grads(module, params, extra, x):
    r = _rand(
        99,
        *jax.eval_shape(
            lambda: module.apply({"params": params, **extra}, x, mutable=True)[0]
        ).shape,
    )

    def loss(p):
        y, _ = module.apply({"params": p, **extra}, x, mutable=True)
        return jnp.sum(y * r)

    return jax.grad(loss)(params)


def _leaves(tree):
    """(key path, leaf) pairs, with None and tuples of axes as leaves."""
    return jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda v: v is None or isinstance(v, tuple)
    )[0]


def _check_centralized(grads, axes):
    """After centralize: zero mean over exactly the axes, None leaves untouched."""
    out = dict(_leaves(apply(optax_gc.centralize(reduction_axes=axes), grads)))
    by_path = dict(_leaves(axes))
    checked = 0
    for path, g in _leaves(grads):
        a, c = by_path[path], out[path]
        if a is None:
            assert c is g, jax.tree_util.keystr(path)
            continue
        checked += 1
        g, c = np.asarray(g, np.float64), np.asarray(c, np.float64)
        scale = np.abs(g).max()
        # One mean per output unit: e.g. per (head, head_dim) for attention.
        assert np.abs(g.mean(a)).max() > 1e-4 * scale  # GC had work to do
        assert np.abs(c.mean(a)).max() <= 1e-6 * scale
        np.testing.assert_allclose(c, reference_gc(g, a), atol=1e-6 * scale)
        # Other axes are not centred: the output axes, and the rank rule's
        # choice (every axis but the last) where it differs and is no superset.
        outputs = tuple(i for i in range(g.ndim) if i not in a)
        for wrong in (outputs, tuple(range(g.ndim - 1))):
            if wrong and not set(a) <= set(wrong):
                assert np.abs(c.mean(wrong)).max() > 1e-4 * scale, wrong
    return checked


@pytest.mark.parametrize(
    ("name", "make", "x", "expected", "units"), NNX_CASES, ids=_case_ids(NNX_CASES)
)
def test_nnx_layer_axes(name, make, x, expected, units):
    layer = make(nnx.Rngs(0))
    axes = fan_in_axes(layer)
    assert axes == expected
    n = _check_centralized(_nnx_grads(layer, x), axes)
    assert n == sum(a is not None for _, a in _leaves(expected))


@pytest.mark.parametrize(
    ("name", "module", "x", "expected", "units"),
    LINEN_CASES,
    ids=_case_ids(LINEN_CASES),
)
def test_linen_layer_axes(name, module, x, expected, units):
    axes = linen_fan_in_axes(module, x)
    assert axes == expected
    variables = module.init(jax.random.key(0), x)
    params = variables.pop("params")
    n = _check_centralized(_linen_grads(module, params, variables, x), axes)
    assert n == sum(a is not None for _, a in _leaves(expected))


def _jacobian_fan_in(f, w, units):
    """The fan-in axes of kernel ``w`` as the layer's Jacobian shows them.

    For each output unit (an index into the output axes ``units``, summed over
    the others), which kernel entries does it depend on? An axis along which
    each unit depends on one index is an output axis; one along which it
    depends on every index is fan-in. Axes of size one say nothing and are
    skipped. Shares no code with optax_gc.
    """

    def per_unit(w):
        y = f(w)
        return y.sum(tuple(a for a in range(y.ndim) if a not in units))

    jac = np.asarray(jax.jacrev(per_unit)(w))
    support = (np.abs(jac) > 1e-7).reshape(-1, *w.shape)
    fan = []
    for a in range(w.ndim):
        if w.shape[a] == 1:
            continue
        others = tuple(b + 1 for b in range(w.ndim) if b != a)
        spans = set(np.count_nonzero(support.any(axis=others), axis=1).tolist())
        assert spans in ({1}, {w.shape[a]}), (a, spans)
        if spans == {w.shape[a]}:
            fan.append(a)
    return tuple(fan)


def _without_unit_axes(axes, shape):
    return tuple(a for a in axes if shape[a] != 1)


@pytest.mark.parametrize(
    ("name", "make", "x", "expected", "units"),
    [c for c in NNX_CASES if c[4] is not None],
    ids=_case_ids(c for c in NNX_CASES if c[4] is not None),
)
def test_nnx_axes_match_jacobian(name, make, x, expected, units):
    graphdef, state = nnx.split(make(nnx.Rngs(0)))
    pure = nnx.to_pure_dict(state)

    def f(w):
        new = jax.tree.map(lambda v: v, state)
        nnx.replace_by_pure_dict(new, pure | {"kernel": w})
        return nnx.merge(graphdef, new)(x)

    w = pure["kernel"]
    assert _jacobian_fan_in(f, w, units) == _without_unit_axes(
        expected["kernel"], w.shape
    )


@pytest.mark.parametrize(
    ("name", "module", "x", "expected", "units"),
    [c for c in LINEN_CASES if c[4] is not None],
    ids=_case_ids(c for c in LINEN_CASES if c[4] is not None),
)
def test_linen_axes_match_jacobian(name, module, x, expected, units):
    params = module.init(jax.random.key(0), x)["params"]

    def f(w):
        return module.apply({"params": params | {"kernel": w}}, x)

    w = params["kernel"]
    assert _jacobian_fan_in(f, w, units) == _without_unit_axes(
        expected["kernel"], w.shape
    )


def test_wrappers_norms_and_recurrent_cells():
    r = nnx.Rngs(0)
    dense = {"kernel": (0,), "bias": None}
    assert fan_in_axes(nnx.InstanceNorm(4, rngs=r)) == {"scale": None, "bias": None}
    for wrapper in (nnx.WeightNorm, nnx.SpectralNorm):
        wrapped = wrapper(nnx.Linear(3, 4, rngs=r), rngs=r)
        assert fan_in_axes(wrapped) == {"layer_instance": dense}
    # Gate kernels (in, 3 * hidden) or (in, 4 * hidden): one unit per gate.
    assert fan_in_axes(nnx.GRUCell(3, 4, rngs=r)) == {
        "dense_h": {"kernel": (0,)},
        "dense_i": dense,
    }
    x, h = jnp.ones((2, 3)), jnp.zeros((2, 4))
    lstm = linen_fan_in_axes(nn.OptimizedLSTMCell(4), (h, h), x)  # DenseParams
    assert lstm["hi"] == dense and lstm["ii"] == {"kernel": (0,)}
    assert len(lstm) == 8

    class Wrapped(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.WeightNorm(nn.Dense(4))(x)
            x = nn.SpectralNorm(nn.Dense(4))(x, update_stats=True)
            return nn.InstanceNorm()(x[:, None, :])

    assert linen_fan_in_axes(Wrapped(), x) == {
        "Dense_0": dense,
        "Dense_1": dense,
        "InstanceNorm_0": {"scale": None, "bias": None},
        "WeightNorm_0": {"Dense_0/kernel/scale": None},
    }


def test_einsum_fan_in_axes():
    assert einsum_fan_in_axes("btd,dhk->bthk", 3) == (-3,)
    assert einsum_fan_in_axes("bhd,hdk->bhk", 3) == (-2,)
    assert einsum_fan_in_axes("b d, d k -> b k", 2) == (-2,)  # spaces
    assert einsum_fan_in_axes("...d,...dk->...k", 4) == (-2,)  # ellipsis kept
    assert einsum_fan_in_axes("bd,...dk->bk", 4) == (-4, -3, -2)  # ellipsis summed
    assert einsum_fan_in_axes("bd,d->bd", 1) is None  # a scale: no fan-in
    with pytest.raises(ValueError, match="two operands"):
        einsum_fan_in_axes("bd,dk", 2)
    with pytest.raises(ValueError, match="kernel has rank 3"):
        einsum_fan_in_axes("bd,dk->bk", 3)


# ---------------------------------------------------------------- whole models


class TinyLM(nnx.Module):
    """Token and position embeddings, one pre-norm attention block, a head."""

    def __init__(self, rngs, vocab=11, dim=8, heads=2, length=6):
        self.tok = nnx.Embed(vocab, dim, rngs=rngs)
        self.pos = nnx.Embed(length, dim, rngs=rngs)
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=heads, in_features=dim, decode=False, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, 2 * dim, rngs=rngs)
        self.down = nnx.Linear(2 * dim, dim, rngs=rngs)
        self.norm = nnx.RMSNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, vocab, rngs=rngs)

    def __call__(self, ids):
        x = self.tok(ids) + self.pos(jnp.arange(ids.shape[1]))[None]
        x = x + self.attn(self.ln1(x), mask=nnx.make_causal_mask(ids))
        x = x + self.down(nnx.gelu(self.up(self.ln2(x))))
        return self.head(self.norm(x))


def _lm_loss(model, ids):
    logits = model(ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def _split_by_axes(state, axes):
    """The params' leaves, split into kernels (with axes) and the rest."""
    by_path = {jax.tree_util.keystr(p): a for p, a in _leaves(axes)}
    kernels, rest = {}, {}
    for p, v in jax.tree_util.tree_leaves_with_path(state):
        key = jax.tree_util.keystr(p)
        a = by_path[key]
        (kernels if a is not None else rest)[key] = (np.asarray(v, np.float64), a)
    return kernels, rest


# The attention key bias adds q . b_k to every key's score alike, which the
# softmax cancels: its gradient is zero (up to rounding) with or without GC.
_ZERO_GRADIENT = "['key']['bias']"


def test_nnx_transformer_sgd_keeps_fan_in_sums():
    ids = _ids(0, 4, 7, high=11)
    model = TinyLM(nnx.Rngs(0))
    axes = fan_in_axes(model)
    assert axes["tok"] == {"embedding": None}
    assert axes["attn"]["query"] == {"kernel": (0,), "bias": None}
    assert axes["attn"]["out"]["kernel"] == (0, 1)
    lr = 0.5
    tx = optax.chain(optax_gc.centralize(reduction_axes=axes), optax.sgd(lr))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(_lm_loss)(model, ids)
        return (
            loss,
            nnx.to_pure_dict(nnx.state(grads, nnx.Param)),
            opt.update(model, grads),
        )

    kernels0, rest0 = _split_by_axes(
        nnx.to_pure_dict(nnx.state(model, nnx.Param)), axes
    )
    loss0, grads, upd = step(model, opt)
    # The update applied is plain SGD's on what has no fan-in, SGD on the
    # centralized gradient (per unit, per head) on every kernel.
    g_kernels, g_rest = _split_by_axes(grads, axes)
    u_kernels, u_rest = _split_by_axes(upd, axes)
    for key, (u, _) in u_rest.items():
        np.testing.assert_allclose(u, -lr * g_rest[key][0], rtol=1e-6, err_msg=key)
    changed = set()
    for key, (u, a) in u_kernels.items():
        g = g_kernels[key][0]
        np.testing.assert_allclose(u, -lr * reference_gc(g, a), atol=1e-6, err_msg=key)
        if np.abs(u + lr * g).max() > 1e-4:
            changed.add(key)
    # Kernels fed by a fresh LayerNorm (query, key, value, up) already have
    # centred gradients: at init each token's normalized features have zero
    # mean, so sum_i x_i * delta_o = 0. GC acts on them once the norm trains.
    assert changed == {
        "['attn']['out']['kernel']",
        "['down']['kernel']",
        "['head']['kernel']",
    }
    losses = [float(step(model, opt)[0]) for _ in range(10)]
    assert losses[-1] < float(loss0)
    kernels1, rest1 = _split_by_axes(
        nnx.to_pure_dict(nnx.state(model, nnx.Param)), axes
    )
    assert len(kernels1) == 7  # query, key, value, out, up, down, head
    for key, (w1, a) in kernels1.items():
        w0 = kernels0[key][0]
        np.testing.assert_allclose(w1.sum(a), w0.sum(a), atol=1e-5, err_msg=key)
        assert np.abs(w1 - w0).max() > 1e-3, key
    # 2 embeddings, 5 norm parameters, 4 attention and 3 dense biases
    assert len(rest1) == 14
    for key, (w1, _) in rest1.items():  # biases, norms, embeddings train
        if not key.endswith(_ZERO_GRADIENT):
            assert np.abs(w1 - rest0[key][0]).max() > 1e-4, key


def test_nnx_kernel_count_and_rank_rule_differences():
    model = nnx.eval_shape(lambda: TinyLM(nnx.Rngs(0)))
    axes = fan_in_axes(model)
    rank_rule = optax_gc.default_reduction_axes(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))
    )
    ours = {jax.tree_util.keystr(p): a for p, a in _leaves(axes)}
    theirs = {jax.tree_util.keystr(p): a for p, a in _leaves(rank_rule)}
    differ = {k for k in ours if ours[k] != theirs[k]}
    # The rank rule mixes heads, centralizes per-head biases and embeddings.
    assert differ == {
        "['attn']['key']['kernel']",
        "['attn']['query']['kernel']",
        "['attn']['value']['kernel']",
        "['attn']['key']['bias']",
        "['attn']['query']['bias']",
        "['attn']['value']['bias']",
        "['pos']['embedding']",
        "['tok']['embedding']",
    }


class LinenLM(nn.Module):
    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(11, 8)(ids)
        x = x + nn.MultiHeadDotProductAttention(num_heads=2)(nn.LayerNorm()(x))
        x = nn.Dense(
            8,
            kernel_init=nn.with_partitioning(
                nn.initializers.lecun_normal(), (None, "model")
            ),
        )(x)
        return nn.DenseGeneral(11, axis=-1)(nn.RMSNorm()(x))


def test_linen_transformer_sgd_keeps_fan_in_sums():
    ids = _ids(1, 4, 7, high=11)
    module = LinenLM()
    axes = linen_fan_in_axes(module, ids[:, :-1])
    assert axes["MultiHeadDotProductAttention_0"]["query"] == {
        "kernel": (0,),
        "bias": None,
    }
    assert axes["Embed_0"] == {"embedding": None}
    params = module.init(jax.random.key(0), ids[:, :-1])["params"]
    assert isinstance(params["Dense_0"]["kernel"], nn.Partitioned)  # boxes kept
    state = TrainState.create(
        apply_fn=module.apply,
        params=params,
        tx=optax.chain(optax_gc.centralize(reduction_axes=axes), optax.sgd(0.5)),
    )

    @jax.jit
    def step(state):
        def loss(p):
            logits = state.apply_fn({"params": p}, ids[:, :-1])
            return optax.softmax_cross_entropy_with_integer_labels(
                logits, ids[:, 1:]
            ).mean()

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(10):
        state = step(state)
    kernels0, rest0 = _split_by_axes(nn.unbox(params), axes)
    kernels1, rest1 = _split_by_axes(nn.unbox(state.params), axes)
    assert len(kernels1) == 6
    for key, (w1, a) in kernels1.items():
        np.testing.assert_allclose(
            w1.sum(a), kernels0[key][0].sum(a), atol=1e-5, err_msg=key
        )
        assert np.abs(w1 - kernels0[key][0]).max() > 1e-3, key
    for key, (w1, _) in rest1.items():
        if not key.endswith(_ZERO_GRADIENT):
            assert np.abs(w1 - rest0[key][0]).max() > 1e-4, key


def test_plain_dense_conv_trees_agree_with_the_rank_rule():
    class CNN(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
            self.conv2 = nnx.Conv(4, 4, kernel_size=(3,), rngs=rngs)
            self.dense = nnx.Linear(16, 8, rngs=rngs)
            self.head = nnx.Linear(8, 1, rngs=rngs)

    # Abstract models work too: only shapes and layer types are read.
    model = nnx.eval_shape(lambda: CNN(nnx.Rngs(0)))
    assert fan_in_axes(model) == optax_gc.default_reduction_axes(
        nnx.to_pure_dict(nnx.state(model, nnx.Param))
    )

    class LinenCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(4, (3, 3))(x)
            return nn.Dense(1)(nn.Dense(8)(x.reshape(x.shape[0], -1)))

    x = jnp.zeros((1, 4, 4, 1))
    params = jax.eval_shape(LinenCNN().init, jax.random.key(0), x)["params"]
    assert linen_fan_in_axes(LinenCNN(), x) == optax_gc.default_reduction_axes(params)


def test_stacked_layers_keep_their_leading_axis():
    @nnx.vmap(in_axes=0, out_axes=0)
    def make(key):
        return nnx.Linear(4, 5, rngs=nnx.Rngs(key))

    stack = make(jax.random.split(jax.random.key(0), 3))  # kernel (3, 4, 5)
    assert fan_in_axes(stack) == {"kernel": (1,), "bias": None}

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.Dense(4)(x), None

    scanned = nn.scan(
        Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3
    )
    axes = linen_fan_in_axes(scanned(), jnp.zeros((2, 4)), None)
    assert axes == {"Dense_0": {"kernel": (1,), "bias": None}}


def test_wrt_selects_the_optimized_params():
    model = nnx.Sequential(nnx.LoRALinear(6, 4, lora_rank=2, rngs=nnx.Rngs(0)))
    axes = fan_in_axes(model, wrt=nnx.LoRAParam)
    assert axes == {"layers": {0: {"lora": {"lora_a": (0,), "lora_b": (0,)}}}}
    tx = optax.chain(optax_gc.centralize(reduction_axes=axes), optax.sgd(0.1))
    opt = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
    x = _rand(0, 3, 6)
    grads = nnx.grad(
        lambda m: jnp.sum(m(x) ** 2), argnums=nnx.DiffState(0, nnx.LoRAParam)
    )(model)
    upd = opt.update(model, grads)
    a = np.asarray(upd["layers"][0]["lora"]["lora_a"])
    np.testing.assert_allclose(a.mean(0), 0.0, atol=1e-7)
    # All variables: batch statistics of a norm get None, nothing warns.
    bn = nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    assert fan_in_axes(bn, wrt=nnx.Variable) == dict.fromkeys(
        ("bias", "mean", "scale", "var")
    )


# ---------------------------------------------------------------- unknown layers


class Custom(nnx.Module):
    def __init__(self, rngs):
        self.w = nnx.Param(jnp.ones((4, 3)))
        self.gain = nnx.Param(jnp.ones((3,)))  # rank 1: quietly None
        self.lin = nnx.Linear(3, 2, rngs=rngs)


class GatedLinear(nnx.Linear):
    def __init__(self, rngs):
        super().__init__(3, 2, rngs=rngs)
        self.gate = nnx.Param(jnp.ones((3, 2)))  # not a Linear parameter


def test_unknown_layers_warn_once_naming_every_path():
    model = nnx.Dict(
        a=Custom(nnx.Rngs(0)), b=Custom(nnx.Rngs(1)), g=GatedLinear(nnx.Rngs(2))
    )
    with pytest.warns(UnknownLayerWarning) as record:
        axes = fan_in_axes(model)
    assert len(record) == 1
    message = str(record[0].message)
    for where in (
        "['a']['w'] (4, 3) in Custom",
        "['b']['w'] (4, 3) in Custom",
        "['g']['gate'] (3, 2) in GatedLinear",
    ):
        assert where in message
    assert "gain" not in message and "lin" not in message
    assert "3 parameter(s)" in message and "left them alone" in message
    assert axes["a"] == {"w": None, "gain": None, "lin": {"kernel": (0,), "bias": None}}
    assert axes["g"] == {"kernel": (0,), "bias": None, "gate": None}

    with pytest.warns(UnknownLayerWarning, match="layout rule"):
        layout = fan_in_axes(model, unknown="layout")
    assert layout["a"]["w"] == (0,) and layout["g"]["gate"] == (0,)

    rules = {
        Custom: lambda m: {"w": (-2,), "gain": None},
        GatedLinear: lambda m: {"kernel": (-2,), "bias": None, "gate": (-2,)},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        taught = fan_in_axes(model, rules=rules)
    assert taught["b"]["w"] == (0,) and taught["g"]["gate"] == (0,)


def test_linen_unknown_layer_warns():
    class Raw(nn.Module):
        @nn.compact
        def __call__(self, x):
            w = self.param("w", nn.initializers.ones, (x.shape[-1], 3))
            return nn.Dense(2)(x @ w)

    with pytest.warns(UnknownLayerWarning, match=r"\['w'\] \(4, 3\) in Raw") as record:
        axes = linen_fan_in_axes(Raw(), jnp.zeros((1, 4)))
    assert len(record) == 1
    assert axes == {"w": None, "Dense_0": {"kernel": (0,), "bias": None}}
    assert linen_fan_in_axes(
        Raw(), jnp.zeros((1, 4)), rules={Raw: lambda m: {"w": (-2,)}}
    )["w"] == (0,)


def test_errors():
    with pytest.raises(TypeError, match="linen_fan_in_axes"):
        fan_in_axes(nn.Dense(3))
    with pytest.raises(TypeError, match="use fan_in_axes"):
        linen_fan_in_axes(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="unknown='bogus'"):
        fan_in_axes(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), unknown="bogus")
    with pytest.raises(
        ValueError, match=r"out of range for leaf \['kernel'\] of shape"
    ):
        fan_in_axes(
            nnx.Linear(2, 3, rngs=nnx.Rngs(0)),
            rules={nnx.Linear: lambda m: {"kernel": (5,), "bias": None}},
        )


def test_fan_in_of_one_is_none():
    # One input: GC would zero the gradient, centralize leaves it alone.
    assert fan_in_axes(nnx.Linear(1, 3, rngs=nnx.Rngs(0)))["kernel"] is None


def test_submodule_imports_the_real_flax():
    import flax

    import optax_gc.flax as gc_flax

    # optax_gc/flax.py is not shadowing the flax package (absolute imports).
    assert gc_flax.nnx is flax.nnx and gc_flax.nn is flax.linen


def test_core_package_does_not_import_flax():
    code = "import sys, optax_gc; print('flax' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_stacks_anywhere_are_found_from_the_layers_own_shape():
    """A stack built with out_axes=1 (kernel (in, L, out)) gets the fan-in
    axis of the layer, not the stack axis; so does a linen vmap with
    variable_axes 1, and a Conv or LoRA stack."""

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=1)
    def linear(rngs):
        return nnx.Linear(4, 5, rngs=rngs)

    stack = linear(nnx.Rngs(0))
    assert stack.kernel[...].shape == (4, 3, 5)
    assert fan_in_axes(stack) == {"kernel": (0,), "bias": None}

    @nnx.split_rngs(splits=2)
    @nnx.vmap(in_axes=(0,), out_axes=1)
    def conv(rngs):
        return nnx.Conv(3, 6, kernel_size=(3,), rngs=rngs)

    assert conv(nnx.Rngs(0)).kernel[...].shape == (3, 2, 3, 6)
    assert fan_in_axes(conv(nnx.Rngs(0)))["kernel"] == (0, 2)

    @nnx.split_rngs(splits=2)
    @nnx.vmap(in_axes=(0,), out_axes=1)
    def lora(rngs):
        return nnx.LoRA(6, 3, 5, rngs=rngs)

    axes = fan_in_axes(lora(nnx.Rngs(0)))  # (6, 2, 3) and (3, 2, 5)
    assert axes == {"lora_a": (0,), "lora_b": (0,)}

    class Stacked(nn.Module):
        @nn.compact
        def __call__(self, x):
            dense = nn.vmap(
                nn.Dense,
                variable_axes={"params": 1},
                split_rngs={"params": True},
                in_axes=None,
                out_axes=0,
                axis_size=3,
            )
            return dense(5)(x)

    linen_axes = linen_fan_in_axes(Stacked(), jnp.zeros((2, 4)))
    assert linen_axes == {"VmapDense_0": {"kernel": (0,), "bias": None}}

    # GC with these axes keeps each stacked layer's fan-in sums fixed.
    kernel = stack.kernel[...]
    tx = optax.chain(
        optax_gc.centralize(reduction_axes=fan_in_axes(stack)), optax.sgd(1.0)
    )
    opt = nnx.Optimizer(stack, tx, wrt=nnx.Param)
    grads = jax.tree.map(lambda p: _rand(p.ndim, *p.shape), nnx.state(stack, nnx.Param))
    opt.update(stack, grads)
    np.testing.assert_allclose(
        stack.kernel[...].sum(axis=0), kernel.sum(axis=0), rtol=1e-5, atol=1e-5
    )


def test_stack_that_cannot_be_told_apart_raises():
    """Linear(4, 4) stacked 4 times: (4, 4, 4) holds (4, 4) three ways, with
    different fan-in axes. Guessing could average over the stack: it raises,
    and a user rule (counted in the stored shape) settles it."""

    @nnx.split_rngs(splits=4)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def linear(rngs):
        return nnx.Linear(4, 4, rngs=rngs)

    stack = linear(nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"\['kernel'\] of shape \(4, 4, 4\) stacks its layer's own shape "
        r"\(4, 4\), but the stack axes could be in several places",
    ):
        fan_in_axes(stack)
    rules = {nnx.Linear: lambda layer: {"kernel": (-2,), "bias": None}}
    assert fan_in_axes(stack, rules=rules) == {"kernel": (1,), "bias": None}
