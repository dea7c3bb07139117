"""Interleaved A/B timing, statistics and the machine description."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax

CLOCKS = ("wall", "cpu")


def interleaved(
    runners: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    reps: int,
    warmup: int = 2,
) -> dict[str, dict[str, list[float]]]:
    """Per-round times (seconds) of each runner, run in alternating order.

    A runner does one call and returns something to block on. A round calls
    every runner once, ``reps`` times over (A B C, A B C, ... in an order
    that rotates from round to round) and keeps each runner's fastest call.
    Alternating single calls makes a slow spell of a shared machine hit all
    runners alike, so it drops out of the per-round ratios.

    Returns:
      ``{"wall": {name: [seconds per round]}, "cpu": {...}}``: wall time,
      and CPU time of all this process's threads (steadier on a busy
      machine: time spent waiting for a core is not counted).
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            jax.block_until_ready(runners[name]())
    times: dict[str, dict[str, list[float]]] = {
        clock: {n: [] for n in names} for clock in CLOCKS
    }
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order = order[::-1]
        best = {clock: dict.fromkeys(names, float("inf")) for clock in CLOCKS}
        for _ in range(reps):
            for name in order:
                w0, c0 = time.perf_counter(), time.process_time()
                jax.block_until_ready(runners[name]())
                w1, c1 = time.perf_counter(), time.process_time()
                best["wall"][name] = min(best["wall"][name], w1 - w0)
                best["cpu"][name] = min(best["cpu"][name], c1 - c0)
        for clock in CLOCKS:
            for name in names:
                times[clock][name].append(best[clock][name])
    return times


def ratio_stats(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """Median, min and max of the per-round ratios ``num[i] / den[i]``."""
    ratios = [a / b for a, b in zip(num, den, strict=True)]
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "rounds": len(ratios),
    }


def compile_seconds(lower: Callable[[], Any]) -> float:
    """Wall time of one ``lower().compile()`` (``lower`` returns a Lowered)."""
    t0 = time.perf_counter()
    lower().compile()
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False)
        for line in out.stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import optax

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON to ``path`` (skipped for None)."""
    if path is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def fmt_ratio(s: dict[str, float] | None) -> str:
    """A ratio summary as "median (min-max)", or "-" when absent."""
    if s is None:
        return "-"
    return f"{s['median']:.3f} ({s['min']:.2f}-{s['max']:.2f})"


def fmt_compile(r: dict[str, Any], name: str) -> str:
    """Compile seconds "bare / name (median ratio)", or "-" when not measured."""
    if "compile_s" not in r or name not in r["compile_s"]:
        return "-"
    c = r["compile_s"]
    return f"{c['bare']:.2f} / {c[name]:.2f} ({r['compile_ratio'][name]['median']:.2f})"


def argument_parser(
    doc: str | None, *, rounds: int, reps: bool = True
) -> argparse.ArgumentParser:
    """A benchmark script's argument parser, with the options all three have.

    The description is the script's docstring's first paragraph; defaults
    are shown; ``--rounds``, ``--json`` and (if ``reps``: the script takes
    several calls per round) ``--reps`` are added.
    """
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=rounds)
    if reps:
        parser.add_argument("--reps", type=int, default=3, help="calls per round")
    parser.add_argument("--json", default=None, help="write results here")
    return parser


def markdown_table(head: str, rows: Sequence[str]) -> str:
    """A Markdown table from its header row and its rows."""
    return "\n".join([head, "|---" * (head.count("|") - 1) + "|", *rows])


def save_partial(args: argparse.Namespace, results: list[Any]) -> None:
    """Writes ``--json`` with the results so far (a long run keeps them)."""
    write_json(
        args.json,
        {"machine": machine(), "args": vars(args), "results": results, "partial": True},
    )


def report(args: argparse.Namespace, results: list[Any], text: str) -> list[Any]:
    """Prints the final table and writes ``--json`` (with the machine)."""
    print(text)
    write_json(
        args.json, {"machine": machine(), "args": vars(args), "results": results}
    )
    return results
