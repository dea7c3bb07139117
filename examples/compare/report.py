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
# A fan-in weight sum held by GC moves by float32 rounding only (about 1e-6
# over a few hundred steps); decay and gradients move it by 1e-2 or more.
FAN_IN_SUM_HELD = 1e-4


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``.

    Example:
      >>> plural(1, "seed"), plural(3, "seed")
      ('1 seed', '3 seeds')
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


def gc_active_text(name: str, check: dict[str, Any], res: dict[str, Any]) -> str:
    """One sentence on whether GC ran, saying what was measured.

    Args:
      name: the optimizer (Adam and RMSprop rescale each entry after GC).
      check: the summary's ``gc_active`` entry.
      res: the summary entry (its ``recipe_check``, and for the ResNet its
        ``baseline_check`` and ``title``).
    """
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
    if "baseline_check" in res:  # the ResNet: the weight-space proof too
        sums = check["fan_in_sum"]
        held = (
            "float32 rounding: the decayed gradient is centralized too, so the "
            "sums stay"
            if sums["gc_max"] < FAN_IN_SUM_HELD
            else "THE SUMS MOVED"
        )
        text += (
            f"; the largest change of an output unit's fan-in weight sum over "
            f"training: {sums['gc_max']:.1e} with GC ({held}) vs at least "
            f"{sums['baseline_min']:.1e} in every kernel and seed without"
        )
    recipe = res["recipe_check"]
    same = recipe["max_relative_difference"] <= RECIPE_TOLERANCE
    arm = "The GC arm" if "title" not in res else f"The {res['title']} arm"
    text += (
        f". {arm} {'equals' if same else 'DIFFERS FROM'} {recipe['recipe']}"
        f" (largest relative update difference in float64 "
        f"{recipe['max_relative_difference']:.1e} over 3 steps)"
    )
    if "same_as_sgd_gc" in recipe:
        text += (
            "; GC commutes with SGD's momentum (both are linear), so this arm "
            "is SGD_GC up to float rounding (float64 difference "
            f"{recipe['same_as_sgd_gc']:.1e}): its difference from SGD_GC "
            "measures float32 rounding amplified by training"
        )
    if "baseline_check" in res:
        base = res["baseline_check"]
        same = base["max_relative_difference"] <= RECIPE_TOLERANCE
        text += (
            f"; the baseline (optax_gc.sgd with gc_mask all False) "
            f"{'equals' if same else 'DIFFERS FROM'} {base['recipe']} "
            f"({base['max_relative_difference']:.1e})"
        )
    return text + "."


def heading(name: str, s: dict[str, Any]) -> str:
    """A comparison's heading: the optimizer and its hyperparameters.

    Example:
      >>> heading("sgd", {"hyperparameters": {"learning_rate": 0.01}})
      'sgd (learning_rate 0.01)'
    """
    hp = ", ".join(f"{k} {v:g}" for k, v in s["hyperparameters"].items())
    if "title" not in s:
        return f"{name} ({hp})"
    return f"{name}: {s['title']} vs baseline (optax_gc.sgd, {hp}, cosine decay)"


def model_text(res: dict[str, Any]) -> str:
    """What was trained, for the ResNet (the CNN's is in the README)."""
    cfg = res["config"]
    if cfg.get("model", "cnn") != "resnet":
        return ""
    arms = ", ".join(
        f"{a} ({res['summary'][a]['title']})"
        for a in cfg["resnet_arms"]
        if a in res["summary"]
    )
    return (
        f"ResNet-{6 * cfg['resnet_blocks'] + 2} with BatchNorm (width "
        f"{cfg['resnet_width']}, {res['model']['params']:,} parameters, "
        f"{res['model']['batch_stats']:,} BN statistics), every arm "
        f"optax_gc.sgd with momentum {cfg['resnet_momentum']:g}, coupled weight "
        f"decay {cfg['resnet_weight_decay']:g} on every parameter, learning rate "
        f"warmed up linearly to {cfg['resnet_lr']:g} over "
        f"{cfg['resnet_warmup_epochs']:g} epoch(s), then cosine decay to 0. "
        f"The baseline has GC masked off; GC arms: {arms}. GC touches the conv "
        "and Dense kernels, never BN's scale and bias, and never the BN "
        "statistics (they are not parameters)."
    )


def report(res: dict[str, Any], *, markdown: bool) -> str:
    """The per-comparison tables, as plain text or Markdown."""
    cfg, lines = res["config"], []
    data = res["dataset"]
    resnet = cfg.get("model", "cnn") == "resnet"
    where = "the gradient" if cfg["apply_to"] == "gradient" else "the update"
    which = "conv kernels only" if cfg["conv_only"] else "every kernel"
    if resnet:
        gc_text, mode = (
            model_text(res),
            "in train mode (BN on batch statistics)",
        )
    else:
        gc_text, mode = f"GC on {where} of {which}.", "with dropout"
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
        f"{cfg['batch_size']}). {gc_text} Mean ± sample std "
        "over seeds; GC - baseline: mean of the paired per-seed differences "
        "[95% t interval]. Final values; train metrics are the running mean "
        f"over {since}, {mode}; epoch time excludes compilation and "
        "held-out evaluation."
    )
    for name, s in res["summary"].items():
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
        check = gc_active_text(s.get("optimizer", name), s["gc_active"], s)
        if markdown:
            lines += ["", f"### {heading(name, s)}", ""]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "---|" * len(head))
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            lines += ["", verdict_line, "", check]
        else:
            lines += ["", f"== {heading(name, s)} =="]
            lines += stats.text_table([head, *rows])
            lines += [verdict_line, check]
    lines.append("")
    lines.append(
        "The intervals are per comparison, not corrected for the "
        f"{plural(len(res['summary']), 'comparison' if resnet else 'optimizer')}"
        f" x {len(METRICS)} metrics "
        "shown; "
        f"{plural(cfg['seeds'], 'seed')} can only detect differences larger than "
        "the seed-to-seed spread."
    )
    return "\n".join(lines)


def plot_curves(res: dict[str, Any], path: Path) -> None:
    """Train loss and test accuracy per epoch, mean ± std band, per comparison."""
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
            s = res["summary"][name]
            gc_arm, optimizer = s.get("arm", "gc"), s.get("optimizer", name)
            for arm, color in ((gc_arm, "C0"), ("baseline", "C1")):
                mine = [
                    r["evals"]
                    for r in res["runs"]
                    if r["optimizer"] == optimizer and r["arm"] == arm
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
                lr = s["hyperparameters"]["learning_rate"]
                title = s.get("title", name)
                ax.set_title(f"{title} ({'peak ' if 'title' in s else ''}lr {lr:g})")
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
