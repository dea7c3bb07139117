"""optax_gc under sharding: jit over a mesh of 8 (simulated CPU) devices,
shard_map with output-sharded kernels, and vmap.

Gradient centralization is one mean per output unit over the fan-in axes. A
kernel sharded along a fan-in axis must be reduced in place (only the small
per-output means cross devices, never the kernel), and one sharded only
along its output axis needs no communication at all. The HLO tests check
both in the compiled program.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import jax
import numpy as np
import optax
import pytest
from helpers import reference_gc
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import optax_gc

N_DEV = 8

# Outside CI a process whose jax was imported before conftest.py set the flag
# skips; in CI (CI=true) the sharding checks must run, so too few devices fail.
pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV and not os.environ.get("CI"),
    reason=f"needs {N_DEV} devices (conftest.py sets XLA_FLAGS="
    f"--xla_force_host_platform_device_count={N_DEV} before jax is imported; "
    f"this process has {jax.device_count()})",
)


def test_has_the_simulated_devices() -> None:
    assert jax.device_count() >= N_DEV


# Flax layouts: Dense (in, out), Conv (kh, kw, in, out), a bias, and an
# attention query kernel (in, heads, head_dim) whose fan-in is axis 0 alone.
SHAPES = {
    "dense": {"kernel": (64, 32), "bias": (32,)},
    "conv": {"kernel": (3, 3, 16, 32), "bias": (32,)},
    "attn": {"kernel": (64, 8, 4)},
}
AXES = {
    "dense": {"kernel": (0,), "bias": None},
    "conv": {"kernel": (0, 1, 2), "bias": None},
    "attn": {"kernel": (0,)},
}
N_OUT = 32  # output units of every kernel above (attn: 8 heads * 4)

# Partition specs per leaf. "1d" specs use a mesh (8,) named ("x",); "2d"
# specs a mesh (4, 2) named ("data", "model").
SPECS = {
    "fan_in": (
        "1d",
        {
            "dense": {"kernel": P("x", None), "bias": P()},
            "conv": {"kernel": P(None, None, "x", None), "bias": P()},
            "attn": {"kernel": P("x", None, None)},
        },
    ),
    "fan_out": (
        "1d",
        {
            "dense": {"kernel": P(None, "x"), "bias": P("x")},
            "conv": {"kernel": P(None, None, None, "x"), "bias": P("x")},
            "attn": {"kernel": P(None, "x", None)},
        },
    ),
    "both_2d": (
        "2d",
        {
            "dense": {"kernel": P("data", "model"), "bias": P("model")},
            "conv": {"kernel": P(None, None, "data", "model"), "bias": P("model")},
            "attn": {"kernel": P("data", "model", None)},
        },
    ),
    "replicated": (
        "1d",
        {
            "dense": {"kernel": P(), "bias": P()},
            "conv": {"kernel": P(), "bias": P()},
            "attn": {"kernel": P()},
        },
    ),
}

AXIS_TYPES = [AxisType.Auto, AxisType.Explicit]

COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
    "reduce-scatter",
)


# ----------------------------------------------------------------- helpers


def make_mesh(kind: str, axis_type: AxisType = AxisType.Auto) -> Mesh:
    devices = np.asarray(jax.devices()[:N_DEV])
    if kind == "1d":
        return Mesh(devices, ("x",), axis_types=(axis_type,))
    return Mesh(devices.reshape(4, 2), ("data", "model"), axis_types=(axis_type,) * 2)


def is_spec(x: Any) -> bool:
    return isinstance(x, P)


def random_tree(seed: int = 0, shapes: Any = SHAPES) -> Any:
    """A tree of float32 numpy arrays (host, unsharded) with these shapes."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32) + np.float32(0.5),
        shapes,
        is_leaf=lambda s: isinstance(s, tuple),
    )


def shard_tree(tree: Any, mesh: Mesh, specs: Any) -> Any:
    return jax.tree.map(
        lambda spec, x: jax.device_put(x, NamedSharding(mesh, spec)),
        specs,
        tree,
        is_leaf=is_spec,
    )


def gc_fn(tx: optax.GradientTransformation):
    def f(g):
        return tx.update(g, tx.init(g))[0]

    return f


def unsharded(tx: optax.GradientTransformation, tree: Any) -> Any:
    """The result on one device, from plain (uncommitted) host arrays."""
    with jax.default_device(jax.devices()[0]):
        return jax.tree.map(np.asarray, jax.jit(gc_fn(tx))(tree))


def numpy_gc(tree: Any, axes: Any) -> Any:
    """The shared float64 NumPy reference, leaf by leaf, back in float32."""

    def one(ax, g):
        return g if ax is None else reference_gc(g, ax).astype(np.float32)

    return jax.tree.map(
        one, axes, tree, is_leaf=lambda a: a is None or isinstance(a, tuple)
    )


def assert_trees_close(actual: Any, expected: Any, **tol: float) -> None:
    tol = {"rtol": 1e-6, "atol": 1e-6, **tol}
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for (path, a), e in zip(
        jax.tree_util.tree_flatten_with_path(actual)[0],
        jax.tree.leaves(expected),
        strict=True,
    ):
        assert a.shape == e.shape, jax.tree_util.keystr(path)
        assert a.dtype == e.dtype, jax.tree_util.keystr(path)
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(e), err_msg=jax.tree_util.keystr(path), **tol
        )


def assert_same_shardings(outs: Any, ins: Any) -> None:
    for (path, o), i in zip(
        jax.tree_util.tree_flatten_with_path(outs)[0],
        jax.tree.leaves(ins),
        strict=True,
    ):
        assert o.sharding.is_equivalent_to(i.sharding, i.ndim), (
            f"{jax.tree_util.keystr(path)}: input {i.sharding}, output {o.sharding}"
        )


_HLO_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.*?)\s+(?P<op>[a-z][\w\-]*)\("
)
_HLO_ARRAY = re.compile(r"\b[a-z]+\d*\[(?P<dims>[\d,]*)\]")


def collectives(hlo: str) -> list[tuple[str, list[int], str]]:
    """(op, element count of each result array, line) for every collective.

    Async pairs (``all-reduce-start``/``-done``) are reported by their start.
    """
    found = []
    for line in hlo.splitlines():
        m = _HLO_INSTR.match(line)
        if m is None:
            continue
        op = m["op"].removesuffix("-start")
        if op not in COLLECTIVES:
            continue
        sizes = [
            math.prod(int(d) for d in a["dims"].split(",") if d)
            for a in _HLO_ARRAY.finditer(m["type"])
        ]
        found.append((op, sizes, line.strip()))
    return found


def compiled_hlo(f, *args) -> str:
    return jax.jit(f).lower(*args).compile().as_text()


def assert_only_small_all_reduces(hlo: str, max_elems: int) -> None:
    """No gather/all-to-all/permute; at least one all-reduce, each of at most
    ``max_elems`` elements (the per-output means, not the kernel)."""
    found = collectives(hlo)
    lines = "\n".join(line for *_, line in found)
    assert found, "expected the per-output means to be all-reduced; none found"
    for op, sizes, line in found:
        assert op == "all-reduce", f"unexpected {op}:\n{lines}"
        assert sizes, line
        assert all(s <= max_elems for s in sizes), (
            f"all-reduce bigger than the {max_elems} per-output means:\n{line}"
        )


def assert_no_collectives(hlo: str) -> None:
    found = collectives(hlo)
    assert not found, "unexpected collectives:\n" + "\n".join(x[2] for x in found)


TXS = {
    "explicit_axes": lambda: optax_gc.centralize(reduction_axes=AXES),
    # The layout rule: attn kernel then gets axes (0, 1); still one mean
    # per remaining index, and the sharding behaviour is the same.
    "layout_rule": lambda: optax_gc.centralize(),
}


# ------------------------------------------------------- jit over a mesh


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=str)
@pytest.mark.parametrize("tx_name", list(TXS))
@pytest.mark.parametrize("sharding", list(SPECS))
def test_jit_sharded_matches_unsharded_and_keeps_sharding(
    sharding: str, tx_name: str, axis_type: AxisType
) -> None:
    mesh_kind, specs = SPECS[sharding]
    mesh = make_mesh(mesh_kind, axis_type)
    tx = TXS[tx_name]()
    host = random_tree()
    grads = shard_tree(host, mesh, specs)

    out = jax.jit(gc_fn(tx))(grads)

    expected = unsharded(tx, host)
    assert_trees_close(out, expected)
    if tx_name == "explicit_axes":
        assert_trees_close(out, numpy_gc(host, AXES), atol=2e-6)
        # The centralization really happened: per-output sums are ~0.
        for name, ax in (("dense", (0,)), ("conv", (0, 1, 2)), ("attn", (0,))):
            sums = np.asarray(out[name]["kernel"]).sum(axis=ax)
            np.testing.assert_allclose(sums, 0.0, atol=1e-4)
        np.testing.assert_array_equal(out["dense"]["bias"], host["dense"]["bias"])
    assert_same_shardings(out, grads)


# (leaf, shape, reduction axes, 1-D spec sharding fan-in, 1-D spec sharding
# output only)
KERNELS = {
    "dense": ((64, 32), (0,), P("x", None), P(None, "x")),
    "conv": (
        (3, 3, 16, 32),
        (0, 1, 2),
        P(None, None, "x", None),
        P(None, None, None, "x"),
    ),
    "attn": ((64, 8, 4), (0,), P("x", None, None), P(None, "x", None)),
}


def _kernel_fn(axes: tuple[int, ...]):
    return gc_fn(optax_gc.centralize(reduction_axes={"kernel": axes}))


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=str)
@pytest.mark.parametrize("name", list(KERNELS))
def test_fan_in_sharded_kernel_is_not_gathered(name: str, axis_type: AxisType) -> None:
    shape, axes, fan_in, _ = KERNELS[name]
    mesh = make_mesh("1d", axis_type)
    g = shard_tree({"kernel": random_tree(1, shape)}, mesh, {"kernel": fan_in})

    hlo = compiled_hlo(_kernel_fn(axes), g)

    assert_only_small_all_reduces(hlo, N_OUT)


@pytest.mark.parametrize("name", list(KERNELS))
def test_fan_in_sharded_on_2d_mesh_reduces_local_output_block(name: str) -> None:
    # Fan-in over "data", outputs over "model": each device all-reduces only
    # the means of its own 32 / 2 = 16 outputs (the attn kernel shards heads).
    shape, axes, _, _ = KERNELS[name]
    specs = {
        "dense": P("data", "model"),
        "conv": P(None, None, "data", "model"),
        "attn": P("data", "model", None),
    }
    mesh = make_mesh("2d")
    g = shard_tree({"kernel": random_tree(2, shape)}, mesh, {"kernel": specs[name]})

    hlo = compiled_hlo(_kernel_fn(axes), g)

    assert_only_small_all_reduces(hlo, N_OUT // 2)


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=str)
@pytest.mark.parametrize("placement", ["fan_out", "replicated"])
@pytest.mark.parametrize("name", list(KERNELS))
def test_output_sharded_or_replicated_kernel_needs_no_collective(
    name: str, placement: str, axis_type: AxisType
) -> None:
    shape, axes, _, fan_out = KERNELS[name]
    spec = fan_out if placement == "fan_out" else P()
    mesh = make_mesh("1d", axis_type)
    g = shard_tree({"kernel": random_tree(3, shape)}, mesh, {"kernel": spec})

    assert_no_collectives(compiled_hlo(_kernel_fn(axes), g))


@pytest.mark.parametrize("axis_type", AXIS_TYPES, ids=str)
def test_adam_chain_with_fan_in_sharded_params(axis_type: AxisType) -> None:
    mesh_kind, specs = SPECS["fan_in"]
    mesh = make_mesh(mesh_kind, axis_type)
    tx = optax.chain(optax_gc.centralize(reduction_axes=AXES), optax.adam(1e-3))
    host_params, host_grads = random_tree(4), random_tree(5)

    def step(params, grads, state):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    # optax.adam's bias correction computes `python_float ** int32_count`,
    # which strict promotion (conftest.py) rejects: that is optax, not GC.
    # jax.set_mesh: with Explicit axes, tx.init's replicated `count` needs
    # the mesh in context to be placed on it.
    with jax.numpy_dtype_promotion("standard"), jax.set_mesh(mesh):
        params = shard_tree(host_params, mesh, specs)
        grads = shard_tree(host_grads, mesh, specs)
        state = jax.jit(tx.init)(params)
        hlo = compiled_hlo(step, params, grads, state)
        new_params, new_state = jax.jit(step)(params, grads, state)
    with jax.numpy_dtype_promotion("standard"), jax.default_device(jax.devices()[0]):
        exp_params, exp_state = jax.jit(step)(
            host_params, host_grads, tx.init(host_params)
        )

    assert_only_small_all_reduces(hlo, N_OUT)
    assert_same_shardings(new_params, params)
    for moment in ("mu", "nu"):
        assert_same_shardings(getattr(new_state[1][0], moment), params)
        assert_trees_close(
            getattr(new_state[1][0], moment), getattr(exp_state[1][0], moment)
        )
    assert_trees_close(new_params, exp_params)


# ------------------------------------------------ gradient accumulation

# A two-layer linear model on a (data, model) mesh: the batch over "data",
# the first kernel sharded along its fan-in axis, the second along its output.
MS_SPECS = {
    "dense1": {"kernel": P("model", None), "bias": P()},
    "dense2": {"kernel": P(None, "model"), "bias": P("model")},
}
MS_SHAPES = {
    "dense1": {"kernel": (16, 8), "bias": (8,)},
    "dense2": {"kernel": (8, 4), "bias": (4,)},
}
MICRO = 4  # micro-batches per update


def _ms_loss(params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    h = x @ params["dense1"]["kernel"] + params["dense1"]["bias"][None]
    out = h @ params["dense2"]["kernel"] + params["dense2"]["bias"][None]
    return ((out - y) ** 2).mean()


RECIPES_MS = {
    "sgd_momentum": lambda: optax_gc.sgd(0.05, momentum=0.9),
    "adamw": lambda: optax_gc.adamw(1e-2, weight_decay=0.1),
    "adamw_update": lambda: optax_gc.adamw(1e-2, apply_to="update"),
}


@pytest.mark.parametrize("name", list(RECIPES_MS))
def test_multisteps_on_the_mesh_equals_the_full_batch_step(name: str) -> None:
    # GC is linear: centralizing the mean of the micro-batch gradients is
    # centralizing the full-batch gradient, so optax.MultiSteps over MICRO
    # micro-batches makes the update one full-batch step makes.
    mesh = make_mesh("2d")
    rng = np.random.default_rng(7)
    host = random_tree(8, MS_SHAPES)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    batch = NamedSharding(mesh, P("data"))
    full, multi = RECIPES_MS[name](), optax.MultiSteps(RECIPES_MS[name](), MICRO)

    def step(tx: optax.GradientTransformation):
        def f(params, state, x, y):
            grads = jax.grad(_ms_loss)(params, x, y)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        return jax.jit(f, donate_argnums=(0, 1))

    with jax.numpy_dtype_promotion("standard"), jax.set_mesh(mesh):
        params = shard_tree(host, mesh, MS_SPECS)
        p_full, _ = step(full)(
            params,
            jax.jit(full.init)(params),
            *(jax.device_put(a, batch) for a in (x, y)),
        )
        params = shard_tree(host, mesh, MS_SPECS)
        state = jax.jit(multi.init)(params)
        multi_step = step(multi)
        for i in range(MICRO):
            rows = slice(i * 16, (i + 1) * 16)
            params, state = multi_step(
                params, state, *(jax.device_put(a[rows], batch) for a in (x, y))
            )
            if i < MICRO - 1:  # accumulating: nothing applied yet
                assert_trees_close(params, host, rtol=0, atol=0)
    assert int(state.gradient_step) == 1
    assert_same_shardings(params, shard_tree(host, mesh, MS_SPECS))
    assert_trees_close(params, p_full, rtol=1e-6, atol=1e-7)
    if name == "sgd_momentum":  # no decay: GC ran, each fan-in sum is fixed
        for layer in ("dense1", "dense2"):
            moved = np.asarray(params[layer]["kernel"]) - host[layer]["kernel"]
            assert np.abs(moved).max() > 1e-3
            np.testing.assert_allclose(moved.sum(axis=0), 0, atol=1e-6)


# ------------------------------------------------------- shard_map, vmap


def output_specs(tx_name: str) -> Any:
    """Specs that shard only output axes under the transform's own rule.

    With the layout rule the attn kernel's fan-in is (in, heads), so its only
    output axis is head_dim (4, too small for 8 devices): keep it whole.
    """
    specs = dict(SPECS["fan_out"][1])
    if tx_name == "layout_rule":
        specs["attn"] = {"kernel": P()}
    return specs


@pytest.mark.parametrize("tx_name", list(TXS))
def test_shard_map_with_output_sharded_kernels_matches_global(tx_name: str) -> None:
    mesh = make_mesh("1d")
    tx = TXS[tx_name]()
    host = random_tree(6)
    specs = output_specs(tx_name)
    f = jax.shard_map(gc_fn(tx), mesh=mesh, in_specs=(specs,), out_specs=specs)

    out = jax.jit(f)(shard_tree(host, mesh, specs))

    assert_trees_close(out, unsharded(tx, host))
    if tx_name == "explicit_axes":
        assert_trees_close(out, numpy_gc(host, AXES), atol=2e-6)
    assert_same_shardings(out, shard_tree(host, mesh, specs))


def test_shard_map_with_fan_in_sharded_kernel_sees_local_blocks() -> None:
    # The documented caveat: inside shard_map GC averages the local block,
    # so a fan-in-sharded kernel gets per-block means, not the global ones.
    mesh = make_mesh("1d")
    tx = optax_gc.centralize()
    g = random_tree(7, (64, 32))
    f = jax.shard_map(
        gc_fn(tx), mesh=mesh, in_specs=P("x", None), out_specs=P("x", None)
    )

    out = np.asarray(jax.jit(f)(jax.device_put(g, NamedSharding(mesh, P("x", None)))))

    blocks = g.reshape(N_DEV, 8, 32)
    per_block = (blocks - blocks.mean(axis=1, keepdims=True)).reshape(64, 32)
    np.testing.assert_allclose(out, per_block, rtol=1e-6, atol=1e-6)
    assert not np.allclose(out, g - g.mean(axis=0, keepdims=True), atol=1e-3)


@pytest.mark.parametrize("tx_name", list(TXS))
def test_vmap_over_stacked_gradient_trees(tx_name: str) -> None:
    tx = TXS[tx_name]()
    members = [random_tree(10 + i) for i in range(3)]
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *members)
    state = tx.init(members[0])

    out = jax.jit(jax.vmap(lambda g: tx.update(g, state)[0]))(stacked)

    for i, member in enumerate(members):
        assert_trees_close(
            jax.tree.map(lambda x, i=i: x[i], out), unsharded(tx, member)
        )
    if tx_name == "explicit_axes":
        expected = jax.tree.map(
            lambda *xs: np.stack(xs), *(numpy_gc(m, AXES) for m in members)
        )
        assert_trees_close(out, expected, atol=2e-6)
