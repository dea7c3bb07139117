"""Optimizer-update benchmark: ``chain(centralize(), tx)`` vs ``tx``.

For each parameter tree and optimizer, times the jitted ``update`` +
``apply_updates`` (params and optimizer state donated, as in a training
loop) of these variants in interleaved rounds:

* ``bare``: the optimizer alone;
* ``gc``: ``optax.chain(optax_gc.centralize(), tx)``;
* ``optax_c``: ``optax.chain(optax.centralize(), tx)``. It averages every
  axis but the first: the wrong axes for these Flax trees, and on XLA:CPU a
  cheaper reduction (a handful of long row sums per kernel), but the same
  extra read of the gradient, so its cost is the yardstick;
* ``gc_gemv``, ``gc_gemv_1m`` (with ``--variants``): ``gc`` with the means
  of leading-axes kernels (all, or those of >= 2**20 entries) taken as a
  matrix-vector product with a ones vector (``benchmarks/kernels.py``);
* ``gc_full`` (with ``--variants``): the floor, not GC: each kernel minus
  its one full mean, the same reads and fused subtraction with the cheapest
  reduction XLA has. With it, every row also gives its time over the
  floor's in the same rounds (``/ floor``).

Per row it prints the median of the per-round time ratios to ``bare`` (wall
and CPU time) with their min-max, the memory-traffic bound beside them (one
extra read of the centralized gradients over the optimizer's own passes),
the ratio of the compiled programs' bytes accessed (XLA's cost model),
compile times and the extra temporary memory of the compiled update. Run
from the repository root::

    python -m benchmarks.bench_update                 # all trees, ~15 min
    python -m benchmarks.bench_update --trees resnet50 --optimizers adam
    python -m benchmarks.bench_update --quick         # seconds, tiny tree
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import numpy as np
import optax

import optax_gc
from benchmarks import _timing, kernels, trees

# Each optimizer with its memory passes over the parameters per step, the
# bound's denominator: SGD with momentum reads g, buf, p and writes buf, p;
# Adam(W) reads g, m, v, p and writes m, v, p. (XLA:CPU makes a few more, see
# the "bytes" column: it does not fuse a leaf's whole update into one loop.)
OPTIMIZERS: dict[str, tuple[Callable[[], optax.GradientTransformation], int]] = {
    "sgdm": (lambda: optax.sgd(1e-2, momentum=0.9), 5),
    "adam": (lambda: optax.adam(1e-3), 7),
    "adamw": (lambda: optax.adamw(1e-3, weight_decay=1e-4), 7),
}

DEFAULT_VARIANTS = ("bare", "gc", "optax_c")
FLOOR = "gc_full"  # one full mean per kernel: XLA's floor for a reduction


def transforms(
    tree_name: str, opt: str, variants: tuple[str, ...]
) -> dict[str, optax.GradientTransformation]:
    """The variants of one optimizer for one tree."""
    make, _ = OPTIMIZERS[opt]
    axes = trees.reduction_axes_for(tree_name)

    def build(variant: str) -> optax.GradientTransformation:
        if variant == "bare":
            return make()
        if variant == "optax_c":
            return optax.chain(optax.centralize(), make())
        gc = optax_gc.centralize(reduction_axes=axes)
        if variant != "gc":  # gc_<kernel>: the same transform, another kernel
            gc = kernels.patched(gc, kernels.KERNELS[variant.removeprefix("gc_")])
        return optax.chain(gc, make())

    return {v: build(v) for v in variants}


def make_step(tx: optax.GradientTransformation) -> Callable[..., Any]:
    """One optimizer step: ``(params, state, grads) -> (params, state)``."""

    def step(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def gc_fraction(tree_name: str, shapes: Any) -> float:
    """The fraction of parameter entries that GC centralizes."""
    axes = trees.reduction_axes_for(tree_name)
    if axes is None:
        axes = optax_gc.default_reduction_axes(shapes)
    flat_axes = jax.tree.leaves(
        axes, is_leaf=lambda a: a is None or isinstance(a, tuple)
    )
    touched = sum(
        int(np.prod(x.shape))
        for a, x in zip(flat_axes, jax.tree.leaves(shapes), strict=True)
        if a is not None
    )
    return touched / trees.num_params(shapes)


def memory(compiled: Any) -> dict[str, int]:
    """Temporary, argument, output and aliased bytes of a compiled program."""
    ma = compiled.memory_analysis()
    return {
        "temp": int(ma.temp_size_in_bytes),
        "argument": int(ma.argument_size_in_bytes),
        "output": int(ma.output_size_in_bytes),
        "alias": int(ma.alias_size_in_bytes),
    }


def bytes_accessed(compiled: Any) -> float:
    """XLA's cost-model estimate of the bytes a compiled program moves."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0]
    return float(cost.get("bytes accessed", float("nan")))


def bench_one(
    tree_name: str,
    opt: str,
    *,
    variants: tuple[str, ...],
    rounds: int,
    reps: int,
    compile_rounds: int,
) -> dict[str, Any]:
    """All measurements for one (tree, optimizer) pair."""
    shapes = trees.TREES[tree_name]()
    params0 = trees.materialize(shapes, seed=0)
    grads = jax.tree.map(lambda x: 1e-3 * x, trees.materialize(shapes, seed=1))
    txs = transforms(tree_name, opt, variants)
    steps = {name: make_step(tx) for name, tx in txs.items()}

    def lower(name: str, donate: bool = True) -> Any:
        params = jax.tree.map(jax.numpy.copy, params0)
        donate_argnums = (0, 1) if donate else ()
        return jax.jit(steps[name], donate_argnums=donate_argnums).lower(
            params, txs[name].init(params), grads
        )

    result: dict[str, Any] = {
        "tree": tree_name,
        "optimizer": opt,
        "num_params": trees.num_params(shapes),
        "gc_fraction": gc_fraction(tree_name, shapes),
    }
    result["bound"] = 1 + result["gc_fraction"] / OPTIMIZERS[opt][1]

    # Compile time (trace + lower + compile), interleaved like the run times.
    ctimes: dict[str, list[float]] = {n: [] for n in variants}
    for r in range(compile_rounds):
        for name in variants[r % len(variants) :] + variants[: r % len(variants)]:
            # Without this, jax's in-memory caches return the last compile.
            jax.clear_caches()
            ctimes[name].append(_timing.compile_seconds(partial(lower, name)))
    if compile_rounds:
        result["compile_s"] = {n: statistics.median(t) for n, t in ctimes.items()}
        result["compile_ratio"] = {
            n: _timing.ratio_stats(ctimes[n], ctimes["bare"]) for n in variants[1:]
        }

    compiled = {n: lower(n).compile() for n in variants}
    result["memory"] = {
        "donated": {n: memory(c) for n, c in compiled.items()},
        "not_donated": {n: memory(lower(n, False).compile()) for n in variants},
    }
    result["bytes_accessed"] = {n: bytes_accessed(c) for n, c in compiled.items()}

    # Run time: each runner feeds its (donated) params and state back in.
    def runner(name: str) -> Callable[[], Any]:
        params = jax.tree.map(jax.numpy.copy, params0)
        carry = [params, txs[name].init(params)]
        fn = compiled[name]

        def run() -> Any:
            carry[0], carry[1] = fn(carry[0], carry[1], grads)
            return carry[0]

        return run

    times = _timing.interleaved(
        {n: runner(n) for n in variants}, rounds=rounds, reps=reps
    )
    result["time_ms"] = {
        clock: {n: 1e3 * statistics.median(t) for n, t in by_name.items()}
        for clock, by_name in times.items()
    }
    result["ratio"] = {
        clock: {
            n: _timing.ratio_stats(by_name[n], by_name["bare"]) for n in variants[1:]
        }
        for clock, by_name in times.items()
    }
    if FLOOR in variants:
        result["ratio_to_floor"] = {
            clock: {
                n: _timing.ratio_stats(by_name[n], by_name[FLOOR])
                for n in variants[1:]
                if n != FLOOR
            }
            for clock, by_name in times.items()
        }
    return result


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (one row per tree, optimizer, variant)."""
    head = (
        "| tree | optimizer | variant | bare ms | ms | / bare (wall) "
        "| / bare (CPU) | bound | bytes / bare | / floor (CPU) "
        "| compile s bare / this (ratio) | extra temp MB donated / not |"
    )
    lines: list[str] = []
    for r in results:
        wall, cpu = r["ratio"]["wall"], r["ratio"]["cpu"]
        ms = r["time_ms"]["wall"]
        mem, ba = r["memory"], r["bytes_accessed"]
        to_floor = r.get("ratio_to_floor", {}).get("cpu", {})
        for name in wall:
            extra = [
                (mem[k][name]["temp"] - mem[k]["bare"]["temp"]) / 1e6
                for k in ("donated", "not_donated")
            ]
            lines.append(
                f"| {r['tree']} | {r['optimizer']} | {name} | {ms['bare']:.1f} "
                f"| {ms[name]:.1f} | {_timing.fmt_ratio(wall[name])} "
                f"| {_timing.fmt_ratio(cpu[name])} | {r['bound']:.3f} "
                f"| {ba[name] / ba['bare']:.3f} "
                f"| {_timing.fmt_ratio(to_floor.get(name))} "
                f"| {_timing.fmt_compile(r, name)} "
                f"| {extra[0]:.2f} / {extra[1]:.2f} |"
            )
    return _timing.markdown_table(head, lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark from command-line arguments; returns the results."""
    parser = _timing.argument_parser(__doc__, rounds=30)
    parser.add_argument("--trees", default="resnet50,vit_b16,cnn")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="bare first; from bare, gc, optax_c, "
        + ", ".join(f"gc_{k}" for k in kernels.KERNELS),
    )
    parser.add_argument("--compile-rounds", type=int, default=3)
    parser.add_argument(
        "--quick", action="store_true", help="tiny tree, 3 rounds (a smoke test)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.trees, args.rounds, args.reps, args.compile_rounds = "tiny", 3, 1, 1
    variants = tuple(args.variants.split(","))
    if variants[0] != "bare":
        parser.error("--variants must start with bare (the denominator)")
    results = []
    for tree_name in args.trees.split(","):
        for opt in args.optimizers.split(","):
            r = bench_one(
                tree_name,
                opt,
                variants=variants,
                rounds=args.rounds,
                reps=args.reps,
                compile_rounds=args.compile_rounds,
            )
            results.append(r)
            _timing.save_partial(args, results)
            print("\n".join(table([r]).splitlines()[2:]), flush=True)
    print()
    return _timing.report(args, results, table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
