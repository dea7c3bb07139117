"""The fan-in sums alone: where GC's time goes on XLA:CPU.

Times one jitted function that computes, for every kernel of a tree, only
the sums GC needs (no subtraction, no optimizer), in several ways:

* ``full``: ``g.sum()``, one read of each kernel: the floor for any
  reduction;
* ``columns``: the sums over the leading (fan-in) axes, as
  ``optax_gc.centralize()`` computes them for Flax kernels (a reduction);
* ``gemv``: the same column sums as ``ones(fan-in) . g``;
* ``rows``: the sums over all axes but the first, the reduction
  ``optax.centralize()`` makes (on Flax kernels: a few long rows each).

It prints wall and CPU milliseconds (medians over interleaved rounds), each
as a ratio to ``full``, and the compile time of each. Run from the
repository root::

    python -m benchmarks.bench_means --trees resnet50
    taskset -c 0 python -m benchmarks.bench_means   # one core
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import _timing, trees


def _lead(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(x.ndim - 1))


SUMS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "full": lambda x: x.sum(),
    "columns": lambda x: x.sum(_lead(x)),
    "gemv": lambda x: jax.lax.dot_general(
        jnp.ones(x.shape[:-1], x.dtype),
        x,
        ((_lead(x), _lead(x)), ((), ())),
        precision=jax.lax.Precision.HIGHEST,
    ),
    "rows": lambda x: x.sum(tuple(range(1, x.ndim))),
}


def bench_tree(tree_name: str, *, rounds: int, reps: int) -> dict[str, Any]:
    """Times :data:`SUMS` over the kernels (rank >= 2) of one tree."""
    kernels = [
        x
        for x in jax.tree.leaves(trees.materialize(trees.TREES[tree_name]()))
        if x.ndim >= 2
    ]
    fns: dict[str, Callable[[], Any]] = {}
    compile_s: dict[str, float] = {}
    for name, f in SUMS.items():
        jax.clear_caches()
        lowered = jax.jit(lambda xs, f=f: [f(x) for x in xs]).lower(kernels)
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s[name] = time.perf_counter() - t0
        fns[name] = partial(compiled, kernels)
    times = _timing.interleaved(fns, rounds=rounds, reps=reps)
    return {
        "tree": tree_name,
        "kernels": len(kernels),
        "megabytes": sum(x.nbytes for x in kernels) / 1e6,
        "ms": {
            clock: {n: 1e3 * statistics.median(t) for n, t in by_name.items()}
            for clock, by_name in times.items()
        },
        "ratio_to_full": {
            clock: {
                n: _timing.ratio_stats(t, by_name["full"])["median"]
                for n, t in by_name.items()
            }
            for clock, by_name in times.items()
        },
        "compile_s": compile_s,
    }


def _row(r: dict[str, Any], sums: str) -> str:
    wall, cpu = r["ms"]["wall"][sums], r["ms"]["cpu"][sums]
    to_full = r["ratio_to_full"]
    return (
        f"| {r['tree']} ({r['kernels']} kernels, {r['megabytes']:.0f} MB) "
        f"| {sums} | {wall:.2f} ({to_full['wall'][sums]:.2f}) "
        f"| {cpu:.2f} ({to_full['cpu'][sums]:.2f}) | {r['compile_s'][sums]:.3f} |"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    head = "| tree | sums | wall ms (/ full) | CPU ms (/ full) | compile s |"
    return _timing.markdown_table(head, [_row(r, n) for r in results for n in SUMS])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark from command-line arguments; returns the results."""
    parser = _timing.argument_parser(__doc__, rounds=15)
    parser.add_argument("--trees", default="resnet50,vit_b16")
    parser.add_argument("--quick", action="store_true", help="tiny tree, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.trees, args.rounds, args.reps = "tiny", 2, 1
    results = [
        bench_tree(t, rounds=args.rounds, reps=args.reps) for t in args.trees.split(",")
    ]
    return _timing.report(args, results, table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
