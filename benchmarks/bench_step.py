"""Whole-train-step benchmark: the example CNN with and without GC.

Times one jitted training step (forward, backward, optimizer update) of
``examples/nnx_cnn/models.py``'s ``CNN((28, 28, 1), 10)`` on a batch of 128
with a softmax cross-entropy loss, for SGD with momentum and Adam, each
alone (``bare``), behind ``optax_gc.centralize()`` (``gc``) and behind
``optax.centralize()`` (``optax_c``), in interleaved rounds. The model and
optimizer state are donated, as in a training loop. Run from the repository
root::

    python -m benchmarks.bench_step
    python -m benchmarks.bench_step --rounds 60 --json benchmarks/results/step.json
    python -m benchmarks.bench_step --quick
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import optax_gc
from benchmarks import _timing
from examples.nnx_cnn.models import CNN

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgdm": lambda: optax.sgd(1e-2, momentum=0.9),
    "adam": lambda: optax.adam(1e-3),
}

VARIANTS: dict[str, Callable[[optax.GradientTransformation], Any]] = {
    "bare": lambda tx: tx,
    "gc": lambda tx: optax.chain(optax_gc.centralize(), tx),
    "optax_c": lambda tx: optax.chain(optax.centralize(), tx),
}


def make_step(
    tx: optax.GradientTransformation, *, image: tuple[int, int, int] = (28, 28, 1)
) -> tuple[Callable[..., Any], Any]:
    """A pure train step over the split (model, optimizer) state, and the state.

    The step is ``(state, x, y) -> (loss, state)``; jit it with the state
    donated. (Splitting once and merging inside a ``jax.jit`` function keeps
    Flax's Python-side graph handling out of the timing.)
    """
    model = CNN(image, 10, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, Any]:
        model, optimizer = nnx.merge(graphdef, state)

        def loss_fn(model: CNN) -> jax.Array:
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))

    return step, state


def bench_one(
    opt: str,
    *,
    rounds: int,
    reps: int,
    batch: int,
    compile_rounds: int,
    image: int = 28,
    variants: tuple[str, ...] = tuple(VARIANTS),
) -> dict[str, Any]:
    """All measurements for one optimizer (``image``: height and width)."""
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], (batch, image, image, 1), jnp.float32)
    y = jax.random.randint(keys[1], (batch,), 0, 10)
    steps = {
        n: make_step(VARIANTS[n](OPTIMIZERS[opt]()), image=(image, image, 1))
        for n in variants
    }

    def lower(name: str) -> Any:
        step, state = steps[name]
        return jax.jit(step, donate_argnums=0).lower(state, x, y)

    ctimes: dict[str, list[float]] = {n: [] for n in variants}
    names = list(variants)
    for r in range(compile_rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            jax.clear_caches()
            ctimes[name].append(_timing.compile_seconds(lambda n=name: lower(n)))

    compiled = {n: lower(n).compile() for n in variants}

    def runner(name: str) -> Callable[[], Any]:
        carry = [jax.tree.map(jnp.copy, steps[name][1])]
        fn = compiled[name]

        def run() -> Any:
            loss, carry[0] = fn(carry[0], x, y)
            return loss

        return run

    times = _timing.interleaved(
        {n: runner(n) for n in variants}, rounds=rounds, reps=reps
    )
    result = {
        "optimizer": opt,
        "batch": batch,
        "image": image,
        "time_ms": {
            clock: {n: 1e3 * statistics.median(t) for n, t in by_name.items()}
            for clock, by_name in times.items()
        },
        "ratio": {
            clock: {
                n: _timing.ratio_stats(by_name[n], by_name["bare"]) for n in names[1:]
            }
            for clock, by_name in times.items()
        },
        "temp_bytes": {
            n: int(c.memory_analysis().temp_size_in_bytes) for n, c in compiled.items()
        },
    }
    if compile_rounds:
        result["compile_s"] = {n: statistics.median(t) for n, t in ctimes.items()}
        result["compile_ratio"] = {
            n: _timing.ratio_stats(ctimes[n], ctimes["bare"]) for n in names[1:]
        }
    return result


TABLE_HEAD = (
    "| optimizer | bare ms | GC ms | GC / bare (wall) | GC / bare (CPU) "
    "| optax.centralize / bare (wall) | compile s bare / GC (ratio) "
    "| extra temp KB |"
)


def _row(r: dict[str, Any]) -> str:
    ms, wall = r["time_ms"]["wall"], r["ratio"]["wall"]
    optax_c = _timing.fmt_ratio(wall["optax_c"]) if "optax_c" in wall else "-"
    extra_kb = (r["temp_bytes"]["gc"] - r["temp_bytes"]["bare"]) / 1e3
    return (
        f"| {r['optimizer']} | {ms['bare']:.2f} | {ms['gc']:.2f} "
        f"| {_timing.fmt_ratio(wall['gc'])} "
        f"| {_timing.fmt_ratio(r['ratio']['cpu']['gc'])} | {optax_c} "
        f"| {_timing.fmt_compile(r, 'gc')} | {extra_kb:.1f} |"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    return _timing.markdown_table(TABLE_HEAD, [_row(r) for r in results])


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark from command-line arguments; returns the results."""
    parser = _timing.argument_parser(__doc__, rounds=60)
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="bare first; from " + ", ".join(VARIANTS),
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image", type=int, default=28, help="height and width")
    parser.add_argument("--compile-rounds", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8x8 images, batch 8, 3 rounds, no compile timing (a smoke test)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.reps, args.batch, args.compile_rounds = 3, 1, 8, 0
        args.image = 8
    variants = tuple(args.variants.split(","))
    if variants[0] != "bare" or "gc" not in variants:
        parser.error("--variants must start with bare and include gc")
    results = []
    for opt in args.optimizers.split(","):
        r = bench_one(
            opt,
            rounds=args.rounds,
            reps=args.reps,
            batch=args.batch,
            compile_rounds=args.compile_rounds,
            image=args.image,
            variants=variants,
        )
        results.append(r)
        print(table([r]).splitlines()[-1], flush=True)
    print()
    return _timing.report(args, results, table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
