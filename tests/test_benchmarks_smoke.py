"""The benchmark scripts still run, and what their numbers rest on holds.

The scripts' ``--quick`` modes run in-process on tiny inputs (no timing is
asserted: that is what the scripts are for). Then: GC adds no
gradient-sized temporary to a compiled update (the subtraction fuses into
the optimizer), and the alternative kernels the benchmarks compare
(``benchmarks/kernels.py``) compute the same GC as the library.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply, reference_gc

import optax_gc
from optax_gc import _centralize

# ------------------------------------------------------------ the scripts


@pytest.mark.slow
@pytest.mark.standard_promotion  # optax's sgd/adam count arithmetic
def test_bench_update_quick_runs_and_writes_json(tmp_path, capsys) -> None:
    from benchmarks import bench_update

    out = tmp_path / "update.json"
    variants = "bare,gc,optax_c,gc_full"
    args = ["--quick", "--optimizers", "sgdm", "--variants", variants]
    results = bench_update.main([*args, "--json", str(out)])

    (r,) = results
    assert (r["tree"], r["optimizer"]) == ("tiny", "sgdm")
    assert set(r["ratio"]["wall"]) == {"gc", "optax_c", "gc_full"}
    assert set(r["ratio_to_floor"]["cpu"]) == {"gc", "optax_c"}
    for clock in ("wall", "cpu"):
        assert all(s["median"] > 0 for s in r["ratio"][clock].values())
    # GC reads the gradient once more than the bare optimizer.
    assert r["bytes_accessed"]["gc"] > r["bytes_accessed"]["bare"]
    assert 1 < r["bound"] < 1.2
    assert r["compile_s"]["gc"] > 0
    assert r["memory"]["donated"]["gc"]["alias"] > 0  # donation took effect
    saved = json.loads(out.read_text())
    assert saved["results"][0]["tree"] == "tiny"
    assert saved["machine"]["jax"] == jax.__version__
    assert "| tiny | sgdm | gc |" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.standard_promotion
def test_bench_step_quick_runs(capsys) -> None:
    from benchmarks import bench_step

    (r,) = bench_step.main(
        ["--quick", "--optimizers", "sgdm", "--variants", "bare,gc,floor"]
    )

    assert (r["model"], r["image"], r["batch"]) == ("cnn", 8, 8)
    assert set(r["time_ms"]["wall"]) == {"bare", "gc"}  # floor: profiled only
    gc = r["ratio"]["cpu"]["gc"]
    assert gc["median"] > 0 and len(gc["blocks"]) == 2
    # The CNN's five kernels: one added reduce each, in GC and in the floor.
    assert r["profile"]["gc"]["added_reduces"] == 5
    assert r["profile"]["floor"]["added_reduces"] == 5
    assert r["profile"]["gc"]["reduces"]["named_ms"] > 0
    assert r["analysis"]["gc"]["bytes"] > r["analysis"]["bare"]["bytes"]
    assert "| cnn | 8x8, 8 | sgdm |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_means_quick_runs() -> None:
    from benchmarks import bench_means

    (r,) = bench_means.main(["--quick"])

    assert set(r["ms"]["cpu"]) == {"full", "columns", "gemv", "rows"}
    assert r["kernels"] == 3


def test_benchmark_trees_have_their_published_sizes() -> None:
    from benchmarks import models, trees
    from optax_gc.flax import linen_fan_in_axes

    assert trees.num_params(trees.resnet50()) == 25_557_032
    vit = trees.vit_b16()
    assert trees.num_params(vit) == 86_567_656
    axes = trees.vit_reduction_axes(vit)
    attn = axes["encoderblock_0"]["MultiHeadDotProductAttention_0"]
    assert attn["query"] == {"kernel": (0,), "bias": None}
    assert attn["out"]["kernel"] == (0, 1)
    # The update benchmark's hand-written axes are what the train-step
    # benchmark reads from the linen model.
    x = jnp.zeros((1, 224, 224, 3))
    assert linen_fan_in_axes(models.ViTB16(), x, rules=models.VIT_RULES) == axes


# ------------------------------------------- properties the numbers rest on


@pytest.mark.standard_promotion  # optax's adam count arithmetic
@pytest.mark.parametrize("donate", [True, False])
def test_gc_costs_one_read_of_the_kernels_and_no_temporary(donate) -> None:
    # The subtraction fuses into the optimizer's own loops: compiled, GC +
    # adam reads each kernel once more than adam (the means), writes no
    # centralized copy (that would be >= 2 more passes) and needs no
    # gradient-sized temporary buffer.
    import optax

    params = {
        "conv": {"kernel": jnp.ones((3, 3, 16, 64)), "bias": jnp.ones(64)},
        "dense": {"kernel": jnp.ones((512, 128))},
    }
    kernel_bytes = 4 * (3 * 3 * 16 * 64 + 512 * 128)

    def compiled(tx):
        def step(p, s, g):
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        jitted = jax.jit(step, donate_argnums=(0, 1) if donate else ())
        return jitted.lower(params, tx.init(params), params).compile()

    def bytes_accessed(c) -> float:
        cost = c.cost_analysis()
        return (cost[0] if isinstance(cost, list) else cost)["bytes accessed"]

    bare = compiled(optax.adam(1e-3))
    gc = compiled(optax.chain(optax_gc.centralize(), optax.adam(1e-3)))

    extra_read = bytes_accessed(gc) - bytes_accessed(bare)
    assert 0.99 * kernel_bytes <= extra_read <= 1.1 * kernel_bytes
    extra_temp = (
        gc.memory_analysis().temp_size_in_bytes
        - bare.memory_analysis().temp_size_in_bytes
    )
    assert extra_temp <= kernel_bytes // 10


@pytest.mark.standard_promotion
def test_profile_finds_the_reduces_gc_adds_next_to_their_gradients() -> None:
    import optax

    from benchmarks import _profile

    params = {"conv": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)}}
    params["dense"] = {"kernel": jnp.ones((32, 16))}

    def hlo(tx):
        def step(p, g):
            u, _ = tx.update(g, tx.init(p), p)
            return optax.apply_updates(p, u)

        return jax.jit(step).lower(params, params).compile().as_text()

    sgd = optax.sgd(0.1, momentum=0.9)
    diff = _profile.added_instructions(
        hlo(sgd), hlo(optax.chain(optax_gc.centralize(), sgd))
    )

    assert len(diff["added_reduces"]) == 2  # one per kernel, none for the bias
    assert all(d >= 1 for d in diff["distance"])
    assert diff["counts"]["gc"]["instructions"] > diff["counts"]["bare"]["instructions"]


def test_thunk_times_sums_the_named_thunks_per_step() -> None:
    from benchmarks import _profile

    def ev(name, ts, dur, tid=1):
        return {"name": name, "ts": ts, "dur": dur, "tid": tid, "ph": "X"}

    events = [
        ev("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice", 0, 1),
        ev("conv", 1, 6),
        ev("reduce.1", 7, 3),
        ev("other", 7, 2, tid=2),  # on another thread, during the reduce
        ev("CommonPjRtLoadedExecutable::ExecuteHelperOnSingleDevice", 20, 1),
        ev("conv", 21, 6),
        ev("reduce.1", 27, 3),
    ]

    t = _profile.thunk_times(
        events, thunks={"conv", "reduce.1", "other"}, names={"reduce.1"}
    )

    assert t["steps"] == 2
    assert t["step_ms"] == pytest.approx(10e-3)
    assert t["named_ms"] == pytest.approx(3e-3)
    assert t["named_share"] == pytest.approx(0.3)
    assert t["overlap"] == pytest.approx(2 / 6)


def test_floor_kernel_subtracts_one_full_mean() -> None:
    from benchmarks import kernels

    g = jax.random.normal(jax.random.key(0), (3, 3, 4, 8)) + 0.5

    out = kernels.KERNELS["full"](g, (0, 1, 2))

    np.testing.assert_allclose(out, g - g.mean(), atol=1e-6)
    bias = g[0, 0, 0]
    assert kernels.KERNELS["full"](bias, None) is bias  # left alone, as by GC


KERNEL_CASES = [
    ((3, 3, 8, 16), (0, 1, 2)),  # Flax conv
    ((48, 24), (0,)),  # Dense
    ((32, 4, 8), (0,)),  # attention query (in, heads, dim)
    ((4, 8, 32), (0, 1)),  # attention output (heads, dim, out)
    ((16, 12), (1,)),  # PyTorch layout: the library kernel
]


@pytest.mark.parametrize("name", ["gemv", "gemv_1m", "trailing", "trailing_qkv"])
@pytest.mark.parametrize(("shape", "axes"), KERNEL_CASES, ids=str)
def test_alternative_kernels_compute_the_same_gc(name, shape, axes) -> None:
    from benchmarks import kernels

    g = jax.random.normal(jax.random.key(0), shape, jnp.float32) + 0.5

    out = jax.jit(lambda g: kernels.KERNELS[name](g, axes))(g)

    assert out.dtype == g.dtype
    np.testing.assert_allclose(out, reference_gc(np.asarray(g), axes), atol=1e-5)


def test_patched_transform_uses_the_kernel_and_restores_the_library() -> None:
    from benchmarks import kernels

    calls = []

    def spy(g, axes):
        calls.append(axes)
        return kernels.library_kernel(g, axes)

    tree = {"dense": {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}}
    out = apply(kernels.patched(optax_gc.centralize(), spy), tree)

    assert calls == [None, (0,)]  # bias, kernel (sorted keys)
    assert _centralize.centralize_leaf is kernels.library_kernel
    np.testing.assert_allclose(out["dense"]["kernel"].sum(axis=0), 0.0, atol=1e-6)
