"""The comparison's outputs: the printed tables, summary.md, the CSV and curves.

Everything here reads the results dict that ``train.train_and_evaluate``
builds (and writes to ``results.json``); nothing trains.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from examples.common import stats

METRICS = (
    # (key, label, format, higher is better); None: no direction (time)
    ("epoch_time_s", "epoch time (s)", ".3f", None),
    ("train_loss", "train loss", ".4f", False),
    ("train_acc", "train accuracy", ".4f", True),
    ("test_loss", "test loss", ".4f", False),
    ("test_acc", "test accuracy", ".4f", True),
)
# The recipe check runs in float64; a different algorithm differs by far more.
RECIPE_TOLERANCE = 1e-9


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``.

    Example:
      >>> plural(1, "seed"), plural(3, "seed")
      ('1 seed', '3 seeds')
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


def gc_active_text(name: str, check: dict[str, Any], res: dict[str, Any]) -> str:
    """One sentence on whether GC ran, saying what was measured."""
    kernels = len(check["targeted_kernels"])
    text = (
        f"GC active: {check['active']} (max |per-output fan-in mean| / RMS of "
        f"{check['measured']}, over all steps, seeds and {kernels} kernels: "
        f"{check['gc_max']:.1e} with GC vs {check['baseline_max']:.1e} without)"
    )
    if check["measured"] != "the applied update":
        per = check["per_kernel"]
        gc_applied = max(per["gc"]["applied"][k] for k in check["targeted_kernels"])
        base_applied = max(
            per["baseline"]["applied"][k] for k in check["targeted_kernels"]
        )
        text += f"; the applied update: {gc_applied:.1e} vs {base_applied:.1e}" + (
            f" ({name} rescales each entry after GC, so its step is not centred)"
            if name != "sgd"
            else ""
        )
    recipe = res["recipe_check"]
    same = recipe["max_relative_difference"] <= RECIPE_TOLERANCE
    text += (
        f". The GC arm {'equals' if same else 'DIFFERS FROM'} {recipe['recipe']}"
        f" (largest relative update difference in float64 "
        f"{recipe['max_relative_difference']:.1e} over 3 steps)"
    )
    return text + "."


def report(res: dict[str, Any], *, markdown: bool) -> str:
    """The per-optimizer tables, as plain text or Markdown."""
    cfg, lines = res["config"], []
    data = res["dataset"]
    where = "the gradient" if cfg["apply_to"] == "gradient" else "the update"
    which = "conv kernels only" if cfg["conv_only"] else "every kernel"
    since = (
        "the last epoch's batches"
        if cfg["evals_per_epoch"] == 1
        else f"the last 1/{cfg['evals_per_epoch']} epoch's batches"
    )
    env = res["environment"]
    cmd = f"`{res['command']}`" if markdown else res["command"]
    lines.append(
        f"Command: {cmd}\n\n"
        f"jax {env['jax']}, optax {env['optax']}, flax {env['flax']}, "
        f"{env['jax_backend']} backend, {env['cpu_count']} CPUs "
        f"({env['platform']}).\n"
    )
    lines.append(
        f"{data['name']}: {data['n_train']} train / {data['n_test']} held-out "
        f"images {tuple(data['image_shape'])}, {plural(cfg['seeds'], 'seed')}, "
        f"{plural(cfg['epochs'], 'epoch')} of {data['steps_per_epoch']} steps (batch "
        f"{cfg['batch_size']}). GC on {where} of {which}. Mean ± sample std "
        "over seeds; GC - baseline: mean of the paired per-seed differences "
        "[95% t interval]. Final values; train metrics are the running mean "
        f"over {since}, with dropout; epoch time excludes compilation and "
        "held-out evaluation."
    )
    for name, s in res["summary"].items():
        hp = ", ".join(f"{k} {v:g}" for k, v in s["hyperparameters"].items())
        head = ("metric", "GC", "baseline", "GC - baseline [95% CI]")
        rows = [
            (
                label,
                stats.pm(s["arms"]["gc"][key], fmt),
                stats.pm(s["arms"]["baseline"][key], fmt),
                stats.ci_text(s["difference"][key], fmt),
            )
            for key, label, fmt, _ in METRICS
        ]
        compile_s = [
            f"{s['arms'][a]['compile_time_s']:.2f}" for a in ("gc", "baseline")
        ]
        rows.insert(1, ("compile (s)", *compile_s, ""))
        v = s["verdicts"]
        verdict_line = (
            f"Verdict: test accuracy: {v['test_acc']}; test loss: {v['test_loss']}; "
            f"train loss: {v['train_loss']}."
        )
        check = gc_active_text(name, s["gc_active"], s)
        if markdown:
            lines += ["", f"### {name} ({hp})", ""]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines += ["", verdict_line, "", check]
        else:
            lines += ["", f"== {name} ({hp}) =="]
            lines += stats.text_table([head, *rows])
            lines += [verdict_line, check]
    lines.append("")
    lines.append(
        "The intervals are per comparison, not corrected for the "
        f"{plural(len(res['summary']), 'optimizer')} x {len(METRICS)} metrics "
        "shown; "
        f"{plural(cfg['seeds'], 'seed')} can only detect differences larger than "
        "the seed-to-seed spread."
    )
    return "\n".join(lines)


def plot_curves(res: dict[str, Any], path: Path) -> None:
    """Train loss and test accuracy per epoch, mean ± std band, per optimizer."""
    # The object API with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(res["summary"])
    fig = Figure(figsize=(4.2 * len(names), 6.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(names), squeeze=False)
    for col, name in enumerate(names):
        for row, (key, label) in enumerate(
            (("train_loss", "train loss"), ("test_acc", "test accuracy"))
        ):
            ax = axes[row][col]
            for arm, color in (("gc", "C0"), ("baseline", "C1")):
                mine = [
                    r["evals"]
                    for r in res["runs"]
                    if r["optimizer"] == name and r["arm"] == arm
                ]
                curves = np.array([[e[key] for e in evals] for evals in mine])
                x = np.array([e["epoch"] for e in mine[0]])
                mean = curves.mean(0)
                std = curves.std(0, ddof=1) if len(curves) > 1 else 0 * mean
                ax.plot(x, mean, color=color, marker="o", ms=3, label=arm)
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.25)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            if row == 0:
                lr = res["summary"][name]["hyperparameters"]["learning_rate"]
                ax.set_title(f"{name} (lr {lr:g})")
                ax.legend()
    fig.suptitle(
        f"{res['dataset']['name']}: GC vs baseline, mean ± std over "
        f"{res['config']['seeds']} seeds"
    )
    fig.savefig(path, dpi=110)


def write_csv(res: dict[str, Any], path: Path) -> None:
    """One row per optimizer, arm, seed and evaluation."""
    cols = ["optimizer", "arm", "seed", "epoch", "step", "train_time_s"]
    cols += ["eval_time_s", "train_loss", "train_acc", "test_loss", "test_acc"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for r in res["runs"]:
            for e in r["evals"]:
                writer.writerow({"optimizer": r["optimizer"], "arm": r["arm"]} | e)
