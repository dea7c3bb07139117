"""Whole-train-step benchmark: what GC costs inside a real training step.

Times one jitted training step (forward, backward, optimizer update; Flax
linen, softmax cross-entropy, state donated) of ResNet-50 (BatchNorm in
training mode, as in the Flax ImageNet example), ViT-B/16 (GC's axes from
``optax_gc.flax.linen_fan_in_axes``) or the example CNN, for SGD with
momentum, Adam and AdamW, each alone (``bare``), behind
``optax_gc.centralize()`` (``gc``) and behind ``optax.centralize()``
(``optax_c``). With ``--variants``: ``bare_again``, the bare step compiled
a second time (an A/A control of the method's resolution), and ``floor``,
not GC but each kernel minus its one full mean (the cheapest reduction XLA
has), and ``gemv``, GC with the sums as a product with a ones vector
(``kernels.py``), both compiled and profiled, not timed; ``gc_qkv`` (timed)
is GC with the attention query/key/value kernels' fan-in axis moved last
before the reduce (``kernels.trailing``).

The variants run in interleaved rounds of one call each, in ``--blocks``
blocks (a block is a repeated run); per variant the result gives the median
over all rounds of the per-round ratio to ``bare``, the range of the block
medians, and the quartiles of the per-round ratios, in CPU and wall time.
Beside the timer it reads what does not depend on the machine's load: XLA's
cost analysis (flops, bytes) and memory analysis (temporary, peak) of each
compiled step, the instructions GC adds to the optimised HLO, and (with
``--profile``) those instructions' own time inside traced steps. Run from
the repository root::

    python -m benchmarks.bench_step --models resnet50 --optimizers adam
    python -m benchmarks.bench_step --json benchmarks/results/step.json
    python -m benchmarks.bench_step --quick
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax.training import train_state

import optax_gc
from benchmarks import _profile, _timing, bench_update, kernels, models
from examples.linen_cnn.models import CNN
from optax_gc.flax import linen_fan_in_axes


class Model(NamedTuple):
    """A benchmarked network: how to build it and its inputs."""

    make: Callable[[], nn.Module]
    channels: int
    classes: int
    sizes: dict[str, tuple[int, int]]  # size name -> (image side, batch)
    fan_in_axes: bool  # GC's axes from linen_fan_in_axes (else: layout rule)


MODELS: dict[str, Model] = {
    "resnet50": Model(
        models.ResNet50, 3, 1000, {"small": (64, 8), "large": (224, 4)}, False
    ),
    "vit_b16": Model(
        models.ViTB16, 3, 1000, {"small": (64, 8), "large": (224, 2)}, True
    ),
    "cnn": Model(
        lambda: CNN(10), 1, 10, {"small": (28, 128), "large": (28, 128)}, False
    ),
}

VARIANTS = ("bare", "gc", "optax_c", "bare_again", "gc_qkv", "floor", "gemv")
# Variants that are optax_gc.centralize() traced with a kernel of kernels.py.
KERNEL_VARIANTS = {"gc_qkv": "trailing_qkv", "floor": "full", "gemv": "gemv"}
DEFAULT_VARIANTS = ("bare", "gc", "optax_c")
UNTIMED = ("floor", "gemv")  # compiled and profiled only


class TrainState(train_state.TrainState):
    """A linen ``TrainState`` that also carries BatchNorm statistics."""

    batch_stats: Any


def _transform(variant: str, opt: str, axes: Any) -> optax.GradientTransformation:
    tx = bench_update.OPTIMIZERS[opt][0]()
    if variant == "gc":
        return optax.chain(optax_gc.centralize(reduction_axes=axes), tx)
    if variant == "optax_c":
        return optax.chain(optax.centralize(), tx)
    if variant in KERNEL_VARIANTS:
        gc = optax_gc.centralize(reduction_axes=axes)
        kernel = kernels.KERNELS[KERNEL_VARIANTS[variant]]
        return optax.chain(kernels.patched(gc, kernel), tx)
    return tx


def make_train_step(
    module: nn.Module,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[jax.Array, TrainState]]:
    """``(state, x, y) -> (loss, state)``: gradients, statistics, update."""

    def forward(variables: Any, x: jax.Array) -> tuple[jax.Array, Any]:
        if isinstance(module, CNN):  # no BatchNorm; dropout off (no rng)
            logits: Any = module.apply(variables, x, train=False)
            return logits, {}
        logits, updates = module.apply(variables, x, mutable=["batch_stats"])
        return logits, updates

    def step(
        state: TrainState, x: jax.Array, y: jax.Array
    ) -> tuple[jax.Array, TrainState]:
        def loss_fn(params: Any) -> tuple[jax.Array, Any]:
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            logits, updates = forward(variables, x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return loss.mean(), updates.get("batch_stats", {})

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return loss, state.apply_gradients(grads=grads, batch_stats=stats)

    return step


def make_states(
    model_name: str, opt: str, variants: tuple[str, ...], *, image: int
) -> tuple[nn.Module, dict[str, TrainState]]:
    """The module and a fresh train state per variant (same parameters)."""
    spec = MODELS[model_name]
    module = spec.make()
    x = jnp.zeros((1, image, image, spec.channels))
    if isinstance(module, CNN):
        variables = module.init(jax.random.key(0), x, train=False)
    else:
        variables = module.init(jax.random.key(0), x)
    axes = None
    if spec.fan_in_axes:
        axes = linen_fan_in_axes(module, x, rules=models.VIT_RULES)
    return module, {
        v: TrainState.create(
            apply_fn=module.apply,
            params=jax.tree.map(jnp.copy, variables["params"]),
            tx=_transform(v, opt, axes),
            batch_stats=jax.tree.map(jnp.copy, variables.get("batch_stats", {})),
        )
        for v in variants
    }


def _compile_all(
    lower: Callable[[str], Any], names: list[str], *, rounds: int
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Compiles each timed variant ``max(rounds, 1)`` times, interleaved.

    Returns the last executable of each variant and the compile times (trace
    + lower + compile of a fresh ``jax.jit``, after ``jax.clear_caches()``)
    of the timed ones; :data:`UNTIMED` variants are compiled once, untimed.
    """
    timed = [n for n in names if n not in UNTIMED]
    times: dict[str, list[float]] = {n: [] for n in timed}
    compiled: dict[str, Any] = {}
    for r in range(max(rounds, 1)):
        for name in timed[r % len(timed) :] + timed[: r % len(timed)]:
            jax.clear_caches()
            t0 = time.perf_counter()
            compiled[name] = lower(name).compile()
            times[name].append(time.perf_counter() - t0)
    for name in names:
        if name in UNTIMED:
            compiled[name] = lower(name).compile()
    return compiled, times


def _blocked_ratios(
    times: list[dict[str, dict[str, list[float]]]], names: list[str]
) -> dict[str, dict[str, Any]]:
    """Per clock and variant: ratio to bare over all rounds and per block."""
    out: dict[str, dict[str, Any]] = {}
    for clock in _timing.CLOCKS:
        out[clock] = {}
        for n in names[1:]:
            per_block = [_ratios(t[clock][n], t[clock]["bare"]) for t in times]
            every = [q for block in per_block for q in block]
            quart = statistics.quantiles(every, n=4) if len(every) > 1 else every * 3
            out[clock][n] = {
                "median": statistics.median(every),
                "min": min(every),
                "max": max(every),
                "rounds": len(every),
                "q1": quart[0],
                "q3": quart[-1],
                "blocks": [statistics.median(b) for b in per_block],
            }
    return out


def _ratios(num: list[float], den: list[float]) -> list[float]:
    return [a / b for a, b in zip(num, den, strict=True)]


def _analysis(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    mem = compiled.memory_analysis()
    return {
        "flops": float(cost.get("flops", float("nan"))),
        "bytes": float(cost.get("bytes accessed", float("nan"))),
        "temp": int(mem.temp_size_in_bytes),
        "peak": int(getattr(mem, "peak_memory_in_bytes", 0)),
    }


def _profiled(
    runners: dict[str, Callable[[], Any]],
    compiled: dict[str, Any],
    *,
    steps: int,
) -> dict[str, Any]:
    """Each variant's added instructions, and their time in traced steps.

    Per variant other than ``bare``: the instructions it adds to the bare
    step's HLO (:func:`_profile.added_instructions`), where the reduces are
    scheduled, and from ``steps`` traced steps: the added reduces' own time
    (``reduces``), the other added instructions' time (the optimizer loops
    with the subtraction fused in, ``fused``) against the bare loops they
    replace (``replaced``, from the bare step's trace).
    """
    bare_hlo = compiled["bare"].as_text()
    bare_events = _profile.trace_events(runners["bare"], steps=steps)
    bare_thunks = {i["name"] for i in _profile.entry_instructions(bare_hlo)}
    out: dict[str, Any] = {}
    for name in compiled:
        if name in ("bare", "bare_again"):
            continue
        hlo = compiled[name].as_text()
        diff = _profile.added_instructions(bare_hlo, hlo)
        thunks = {i["name"] for i in _profile.entry_instructions(hlo)}
        reduces = set(diff["added_reduces"])
        events = _profile.trace_events(runners[name], steps=steps)
        out[name] = {
            "counts": diff["counts"],
            "added": len(diff["added"]),
            "added_reduces": len(reduces),
            "added_copies": len(diff["added_copies"]),
            "copy_bytes": diff["copy_bytes"],
            "distance": diff["distance"],
            "reduces": _profile.thunk_times(events, thunks=thunks, names=reduces),
            "fused": _profile.thunk_times(
                events, thunks=thunks, names=set(diff["added"]) - reduces
            ),
            "replaced": _profile.thunk_times(
                bare_events, thunks=bare_thunks, names=set(diff["removed"])
            ),
        }
    return out


def bench_one(
    model_name: str,
    opt: str,
    *,
    size: str,
    rounds: int,
    blocks: int,
    compile_rounds: int,
    profile_steps: int,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    image: int | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """All measurements for one model, input size and optimizer."""
    spec = MODELS[model_name]
    image = image or spec.sizes[size][0]
    batch = batch or spec.sizes[size][1]
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], (batch, image, image, spec.channels))
    y = jax.random.randint(keys[1], (batch,), 0, spec.classes)
    module, states = make_states(model_name, opt, variants, image=image)
    step = make_train_step(module)
    names = list(variants)

    def lower(name: str) -> Any:
        return jax.jit(step, donate_argnums=0).lower(states[name], x, y)

    compiled, ctimes = _compile_all(lower, names, rounds=compile_rounds)

    def runner(name: str) -> Callable[[], Any]:
        carry = [jax.tree.map(jnp.copy, states[name])]
        fn = compiled[name]

        def run() -> Any:
            loss, carry[0] = fn(carry[0], x, y)
            return loss

        return run

    runners = {n: runner(n) for n in names}
    timed_names = [n for n in names if n not in UNTIMED]
    timed = {n: runners[n] for n in timed_names}
    times = [
        _timing.interleaved(timed, rounds=rounds, reps=1, warmup=1)
        for b in range(blocks)
    ]
    result: dict[str, Any] = {
        "model": model_name,
        "size": size,
        "optimizer": opt,
        "image": image,
        "batch": batch,
        "time_ms": {
            clock: {
                n: 1e3 * statistics.median(s for t in times for s in t[clock][n])
                for n in timed_names
            }
            for clock in _timing.CLOCKS
        },
        "ratio": _blocked_ratios(times, timed_names),
        "analysis": {n: _analysis(c) for n, c in compiled.items()},
    }
    if compile_rounds:
        result["compile_s"] = {n: statistics.median(t) for n, t in ctimes.items()}
        result["compile_ratio"] = {
            n: _timing.ratio_stats(ctimes[n], ctimes["bare"]) for n in timed_names[1:]
        }
    if profile_steps:
        result["profile"] = _profiled(runners, compiled, steps=profile_steps)
    return result


TABLE_HEAD = (
    "| model | input, batch | optimizer | bare ms (CPU) | GC / bare (CPU) "
    "| GC / bare (wall) | `optax.centralize()` / bare (CPU) "
    "| GC's reduces in-step, ms (% of step) | `optax.centralize()`'s "
    "| A/A: bare again / bare (CPU) "
    "| compile s bare / GC (ratio) | extra temp / peak MB |"
)

PROFILE_HEAD = (
    "| model | input, batch | optimizer | variant "
    "| added instructions (reduces, copies: MB) | reduces ms (% of step) "
    "| reduces overlapped | thunks after producer "
    "| fused loops ms / bare's | bytes / bare | flops / bare |"
)


def _ratio_cell(s: dict[str, Any] | None) -> str:
    """A ratio as "median [range of the block medians]"."""
    if s is None:
        return "-"
    lo, hi = min(s["blocks"]), max(s["blocks"])
    return f"{s['median']:.4f} [{lo:.4f}-{hi:.4f}]"


def _reduces_cell(r: dict[str, Any], name: str) -> str:
    p = r.get("profile", {}).get(name)
    if p is None:
        return "-"
    t = p["reduces"]
    return f"{t['named_ms']:.2f} ({100 * t['named_share']:.2f}%)"


def _size(r: dict[str, Any]) -> str:
    return f"| {r['model']} | {r['image']}x{r['image']}, {r['batch']} "


def _row(r: dict[str, Any]) -> str:
    cpu, wall = r["ratio"]["cpu"], r["ratio"]["wall"]
    a = r["analysis"]
    extra = [(a["gc"][k] - a["bare"][k]) / 1e6 for k in ("temp", "peak")]
    return (
        f"{_size(r)}| {r['optimizer']} | {r['time_ms']['cpu']['bare']:.1f} "
        f"| {_ratio_cell(cpu['gc'])} | {_ratio_cell(wall['gc'])} "
        f"| {_ratio_cell(cpu.get('optax_c'))} | {_reduces_cell(r, 'gc')} "
        f"| {_reduces_cell(r, 'optax_c')} | {_ratio_cell(cpu.get('bare_again'))} "
        f"| {_timing.fmt_compile(r, 'gc')} | {extra[0]:.2f} / {extra[1]:.2f} |"
    )


def table(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table (ratios: median [block medians])."""
    return _timing.markdown_table(TABLE_HEAD, [_row(r) for r in results])


def _profile_rows(r: dict[str, Any]) -> list[str]:
    a = r["analysis"]
    rows = []
    for name, p in r.get("profile", {}).items():
        t, d = p["reduces"], p["distance"]
        rows.append(
            f"{_size(r)}| {r['optimizer']} | {name} "
            f"| {p['added']} ({p['added_reduces']}, "
            f"{p['added_copies']}: {p['copy_bytes'] / 1e6:.1f}) "
            f"| {t['named_ms']:.2f} ({100 * t['named_share']:.2f}%) "
            f"| {100 * t['overlap']:.0f}% "
            f"| {min(d, default=0)}-{max(d, default=0)} "
            f"| {p['fused']['named_ms']:.1f} / {p['replaced']['named_ms']:.1f} "
            f"| {a[name]['bytes'] / a['bare']['bytes']:.4f} "
            f"| {a[name]['flops'] / a['bare']['flops']:.4f} |"
        )
    return rows


def profile_table(results: list[dict[str, Any]]) -> str:
    """What each variant adds to the bare step's HLO and its traced time."""
    rows = [row for r in results for row in _profile_rows(r)]
    return _timing.markdown_table(PROFILE_HEAD, rows)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Runs the benchmark from command-line arguments; returns the results."""
    # One call per variant per round: no --reps.
    parser = _timing.argument_parser(__doc__, rounds=10, reps=False)
    parser.add_argument("--models", default="resnet50,vit_b16")
    parser.add_argument("--sizes", default="small", help="small, large")
    parser.add_argument("--optimizers", default=",".join(bench_update.OPTIMIZERS))
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="bare first, gc included; from " + ", ".join(VARIANTS),
    )
    parser.add_argument("--blocks", type=int, default=3, help="repeats of --rounds")
    parser.add_argument("--image", type=int, default=None, help="override the size")
    parser.add_argument("--batch", type=int, default=None, help="override the size")
    parser.add_argument("--compile-rounds", type=int, default=2)
    parser.add_argument(
        "--profile", type=int, default=3, help="steps traced per variant (0: none)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the CNN on 8x8 images, batch 8, 3 rounds (a smoke test)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.image, args.batch = "cnn", 8, 8
        args.rounds, args.blocks, args.compile_rounds, args.profile = 3, 2, 1, 1
    variants = tuple(args.variants.split(","))
    if variants[0] != "bare" or "gc" not in variants:
        parser.error("--variants must start with bare and include gc")
    results = []
    for model_name in args.models.split(","):
        for size in args.sizes.split(","):
            for opt in args.optimizers.split(","):
                r = bench_one(
                    model_name,
                    opt,
                    size=size,
                    rounds=args.rounds,
                    blocks=args.blocks,
                    compile_rounds=args.compile_rounds,
                    profile_steps=args.profile,
                    variants=variants,
                    image=args.image,
                    batch=args.batch,
                )
                results.append(r)
                _timing.save_partial(args, results)
                print(table([r]).splitlines()[-1], flush=True)
    print()
    if args.profile:
        print(profile_table(results), end="\n\n")
    return _timing.report(args, results, table(results))


if __name__ == "__main__":
    main(sys.argv[1:])
