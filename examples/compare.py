"""GC vs no GC, measured honestly: seeds, held-out data, spread and paired CIs.

Trains the article's CNN (Conv 16/32/64 3x3 with max-pooling, dropout, Dense
512, softmax over the classes) twice per seed and optimizer: once with
Gradient Centralization (``optax_gc.centralize()`` ahead of the optimizer, or
on its step with ``--apply-to update``) and once with the plain optax
optimizer and the same hyperparameters. Both arms of a seed start from the
same initialisation and see the same batches and dropout masks, so the
per-seed difference isolates GC. It prints, per optimizer, wall time per
epoch (compilation timed separately), final train and held-out loss and
accuracy as mean ± std over seeds, the paired GC - baseline difference with a
95% t confidence interval, a verdict, and a check that GC really ran. It
writes ``results.json``, ``results.csv``, ``curves.png`` and ``summary.md``
to ``--out`` (default ``outputs/compare-<dataset>``).

How GC is checked: the GC arm is built from the same pieces as
``optax_gc.<optimizer>(..., apply_to=...)`` (``centralize()`` before the
plain optax optimizer, or after it), and each train step measures, per
kernel, the largest |per-output fan-in mean| relative to the kernel's RMS,
both of the gradient the optimizer receives and of the update it applies.
With GC on the gradient the first is ~1e-7 and the second is not small for
Adam and RMSprop, which rescale each entry after GC; with GC on the update
the second is ~1e-7. The check reports the quantity GC produced, and
confirms once that the pieces equal the package's recipe.

    python -m examples.compare                    # digits, a few minutes
    python -m examples.compare --dataset fashion_mnist --seeds 5 --epochs 3
    python examples/compare.py --help
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

if not __package__:
    # Run as a script (`python examples/compare.py`): make the repository root
    # importable so that `examples.*` resolves as it does under `python -m`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy import stats
from tqdm import tqdm

import optax_gc
from examples import datasets
from examples.nnx_cnn.models import CNN

OPTIMIZERS = ("rmsprop", "sgd", "adam")
ARMS = ("gc", "baseline")
SGD_MOMENTUM = 0.9
# Per dataset: (epochs, batch size). Digits is small: RMSprop at the
# article's lr of 1e-4 needs a few hundred steps before it learns much.
DEFAULTS = {"digits": (20, 32), "fashion_mnist": (3, 128), "mnist": (3, 128)}
EVAL_BATCH = 1000
# Thresholds of the "GC active" check, on max |per-output fan-in mean| / RMS:
# float32 rounding leaves ~1e-7 after GC; raw gradients sit near 1e-2..1.
CENTRED_BELOW = 1e-4
UNCENTRED_ABOVE = 1e-3
# The recipe check runs in float64; a different algorithm differs by far more.
RECIPE_TOLERANCE = 1e-9
METRICS = (
    # (key, label, format, higher is better); None: no direction (time)
    ("epoch_time_s", "epoch time (s)", ".3f", None),
    ("train_loss", "train loss", ".4f", False),
    ("train_acc", "train accuracy", ".4f", True),
    ("test_loss", "test loss", ".4f", False),
    ("test_acc", "test accuracy", ".4f", True),
)


class ArmTx(NamedTuple):
    """One arm's optimizer in three pieces, so the train step can look inside.

    The step applies ``before``, ``optimizer`` and ``after`` in turn, exactly
    as ``optax.chain(before, optimizer, after)`` would, and measures what the
    optimizer receives and what it finally applies. GC sits in ``before``
    (``apply_to="gradient"``) or ``after`` (``"update"``); the other is the
    identity. The baseline has identities in both.
    """

    before: optax.GradientTransformation
    optimizer: optax.GradientTransformation
    after: optax.GradientTransformation

    def chain(self) -> optax.GradientTransformation:
        """The same transformation as one optax chain."""
        return optax.chain(self.before, self.optimizer, self.after)


def hyperparameters(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The optimizer's hyperparameters, shared by both arms."""
    lr = {"rmsprop": args.lr_rmsprop, "sgd": args.lr_sgd, "adam": args.lr_adam}[name]
    return {"learning_rate": lr} | ({"momentum": SGD_MOMENTUM} if name == "sgd" else {})


def arm_tx(name: str, arm: str, args: argparse.Namespace) -> ArmTx:
    """The plain optax optimizer, with GC before or after it for the GC arm."""
    optimizer = getattr(optax, name)(**hyperparameters(name, args))
    identity = optax.identity()
    if arm == "baseline":
        return ArmTx(identity, optimizer, identity)
    gc = optax_gc.centralize(conv_only=args.conv_only)
    if args.apply_to == "gradient":
        return ArmTx(gc, optimizer, identity)
    return ArmTx(identity, optimizer, gc)


def recipe_check(
    name: str, args: argparse.Namespace, tx: ArmTx, params: Any, *, steps: int = 3
) -> dict[str, Any]:
    """Whether the GC arm's optimizer equals the package's recipe for it.

    The comparison trains with ``ArmTx`` pieces so that it can measure the
    gradient the optimizer receives. This runs both on the same made-up
    gradients (with per-output offsets, which GC removes) for a few steps, in
    float64, so that only a different algorithm shows. With
    ``apply_to="update"`` the recipe centralizes before the learning rate and
    the chain after it: equal in exact arithmetic.

    Args:
      name: ``rmsprop``, ``sgd`` or ``adam``.
      args: the command line (learning rates, ``conv_only``, ``apply_to``).
      tx: the GC arm's pieces.
      params: params to start from.
      steps: how many updates to compare.

    Returns:
      ``recipe`` (the call compared, or ``None`` when ``optax_gc`` has no
      such recipe) and ``max_relative_difference`` (largest |difference| of
      an update leaf over its largest |entry|).
    """
    make = getattr(optax_gc, name, None)
    if make is None:
        return {"recipe": None, "max_relative_difference": None}
    recipe = make(
        **hyperparameters(name, args), conv_only=args.conv_only, apply_to=args.apply_to
    )
    chain = tx.chain()

    @jax.jit  # one compilation, not one per eager operation and leaf shape
    def both(grads, state_r, state_c, params):
        upd_r, state_r = recipe.update(grads, state_r, params)
        upd_c, state_c = chain.update(grads, state_c, params)
        return upd_r, upd_c, state_r, state_c, optax.apply_updates(params, upd_c)

    # In float64: Adam and RMSprop divide each entry by its own scale, which
    # turns float32 rounding of a near-zero centred entry (the two programs
    # may sum the mean in different orders) into visible differences.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
        state_r, state_c, worst = recipe.init(params), chain.init(params), 0.0
        for _ in range(steps):
            grads = jax.tree.map(
                lambda p: rng.normal(size=p.shape) + rng.normal(size=p.shape[-1:]),
                params,
            )
            upd_r, upd_c, state_r, state_c, params = both(
                grads, state_r, state_c, params
            )
            for r, c in zip(
                jax.device_get(jax.tree.leaves(upd_r)),
                jax.device_get(jax.tree.leaves(upd_c)),
                strict=True,
            ):
                scale = float(np.abs(c).max()) or 1.0
                worst = max(worst, float(np.abs(r - c).max()) / scale)
    options = f"conv_only={args.conv_only}, apply_to={args.apply_to!r}"
    call = f"optax_gc.{name}(..., {options})"
    return {"recipe": call, "max_relative_difference": worst}


def kernel_ranks(params: dict[str, Any]) -> dict[str, int]:
    """Name (``layer/kernel``) and rank of each leaf of rank >= 2: GC's candidates."""
    return {
        "/".join(str(k.key) for k in path): x.ndim
        for path, x in jax.tree_util.tree_leaves_with_path(params)
        if x.ndim >= 2
    }


def fan_in_ratios(tree: dict[str, Any]) -> dict[str, jax.Array]:
    """Per kernel: max |mean over its fan-in axes| / RMS of the whole kernel.

    Flax layout: the fan-in axes are every axis but the last. The ratio is
    about 1e-7 (float32 rounding) for a centralized tensor and of order 1e-2
    to 1 for a raw gradient, whatever the tensor's scale.
    """
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if x.ndim >= 2:
            mean = jnp.mean(x, axis=tuple(range(x.ndim - 1)))
            rms = jnp.sqrt(jnp.mean(jnp.square(x)))
            name = "/".join(str(k.key) for k in path)
            out[name] = jnp.max(jnp.abs(mean)) / (rms + jnp.finfo(x.dtype).tiny)
    return out


def graphdefs(
    input_shape: tuple[int, int, int], num_classes: int
) -> tuple[nnx.GraphDef, nnx.GraphDef]:
    """The model's train-mode (dropout on) and eval-mode graphs, no arrays."""
    model = nnx.eval_shape(lambda: CNN(input_shape, num_classes, rngs=nnx.Rngs(0)))
    model.train()
    train = nnx.graphdef(model)
    model.eval()
    return train, nnx.graphdef(model)


@functools.partial(jax.jit, static_argnums=(1, 2))
def init_state(
    seed: jax.typing.ArrayLike, input_shape: tuple[int, int, int], num_classes: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params and dropout random stream for ``seed``, as pure dicts.

    Both come from ``nnx.Rngs(seed)``, so both arms of a seed start from the
    same point. Jitted: one compilation instead of one per eager operation.
    """
    # nnx.Rngs(int) is nnx.Rngs(jax.random.key(int)); a traced seed needs the key.
    model = CNN(input_shape, num_classes, rngs=nnx.Rngs(jax.random.key(seed)))
    _, params, rngs = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rngs)


def checksum(*trees: Any) -> str:
    """SHA-256 of every leaf's bytes (random keys by their key data)."""
    digest = hashlib.sha256()
    for tree in trees:
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()


def make_train_step(graphdef: nnx.GraphDef, tx: ArmTx) -> Callable[..., Any]:
    """One train step as a pure function over split NNX state.

    Compiled once per optimizer and arm and reused for every seed, with no
    NNX Python overhead per step. Steps are called from a Python loop, not a
    ``lax.scan``: XLA:CPU ran this network's step about 5x slower inside a
    loop (measured: 510 ms against 90 ms of CPU per 28x28 batch of 128).

    Args:
      graphdef: the model's train-mode graph (dropout on).
      tx: the arm's optimizer pieces.

    Returns:
      ``train_step(params, opt_state, rngs, totals, images, labels, batch)``
      with ``batch`` the indices ``(batch_size,)`` of this step's images in
      the training set, returning the new ``(params, opt_state, rngs,
      totals)``. ``totals`` (see ``zero_totals``) accumulates over an epoch
      the loss and accuracy sums and, per kernel, the largest fan-in ratio
      (see ``fan_in_ratios``) of the optimizer's input and of the applied
      update, so that an epoch needs one transfer to the host.
    """

    def loss_fn(params, rngs, x, y):
        model = nnx.merge(graphdef, params, rngs)
        logits = model(x)  # dropout on: the train graphdef
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        new_rngs = nnx.to_pure_dict(nnx.state(model, nnx.RngState))
        return loss, (logits, new_rngs)

    def train_step(params, opt_state, rngs, totals, images, labels, batch):
        s_before, s_opt, s_after = opt_state
        x, y = images[batch], labels[batch]
        (loss, (logits, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rngs, x, y
        )
        received, s_before = tx.before.update(grads, s_before, params)
        step, s_opt = tx.optimizer.update(received, s_opt, params)
        applied, s_after = tx.after.update(step, s_after, params)
        params = optax.apply_updates(params, applied)
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        totals = {
            "loss": totals["loss"] + loss,
            "acc": totals["acc"] + acc,
            "received": jax.tree.map(
                jnp.maximum, totals["received"], fan_in_ratios(received)
            ),
            "applied": jax.tree.map(
                jnp.maximum, totals["applied"], fan_in_ratios(applied)
            ),
        }
        return params, (s_before, s_opt, s_after), rngs, totals

    return train_step


def zero_totals(kernels: dict[str, int]) -> dict[str, Any]:
    """The start of an epoch's running sums and maxima (see ``make_train_step``)."""
    zero = jnp.zeros((), jnp.float32)
    return {
        "loss": zero,
        "acc": zero,
        "received": dict.fromkeys(kernels, zero),
        "applied": dict.fromkeys(kernels, zero),
    }


def make_evaluate(graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """Summed held-out loss and hits of one padded batch, dropout off."""

    def evaluate(params, rngs, images, labels, weights):
        logits = nnx.merge(graphdef, params, rngs)(images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        hit = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
        return jnp.sum(loss * weights), jnp.sum(hit * weights)

    return evaluate


def padded_batches(
    images: np.ndarray, labels: np.ndarray, batch: int
) -> list[tuple[jax.Array, jax.Array, jax.Array]]:
    """The whole set in equal batches, the last zero-padded, with 0/1 weights.

    Equal shapes mean one compilation of ``evaluate``.
    """
    n = len(labels)
    batch = min(batch, n)
    pad = -n % batch
    x = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    y = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    return [
        tuple(jnp.asarray(a[i : i + batch]) for a in (x, y, w))
        for i in range(0, len(y), batch)
    ]


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, np.float64)
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return {"mean": float(v.mean()), "std": std, "values": v.tolist()}


def paired_ci(diffs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of paired differences with a t confidence interval (n - 1 dof).

    Args:
      diffs: one GC - baseline difference per seed.
      level: the interval's coverage.

    Returns:
      ``mean``, ``ci_low``, ``ci_high`` (``None`` with a single seed) and the
      ``values``.

    Example:
      >>> ci = paired_ci([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) 4.303
      >>> round(ci["ci_low"], 3), round(ci["ci_high"], 3)
      (-0.484, 4.484)
    """
    d = np.asarray(diffs, np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "values": d.tolist()}
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1))
    half /= math.sqrt(len(d))
    return {
        "mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "values": d.tolist(),
    }


def verdict(ci: dict[str, Any], higher_is_better: bool) -> str:
    """GC better / worse / no significant difference, from a 95% CI."""
    if ci["ci_low"] is None:
        return "no confidence interval from one seed"
    if ci["ci_low"] > 0 or ci["ci_high"] < 0:
        gc_higher = ci["ci_low"] > 0
        return "GC better" if gc_higher == higher_is_better else "GC worse"
    return "no significant difference at 95%"


def gc_active_check(
    runs: list[dict[str, Any]], kernels: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Did GC run? Compares the right quantity across arms, over all steps.

    With ``apply_to="gradient"`` GC's output is the gradient the optimizer
    receives; Adam and RMSprop then rescale each entry, so their applied
    update is not centred even when GC ran. With ``"update"`` GC's output is
    the applied update. Each is measured as max |per-output fan-in mean| /
    RMS per kernel (see ``fan_in_ratios``), maximised over steps and seeds.

    Args:
      runs: one optimizer's runs, both arms.
      kernels: name and rank of each kernel.
      args: the command line (``apply_to``, ``conv_only``).

    Returns:
      ``active`` ("yes", "no", or "inconclusive" when the baseline's
      quantity is centred too), what was ``measured``, the
      ``targeted_kernels``, ``gc_max`` and ``baseline_max`` over those, and
      ``per_kernel`` maxima of both quantities for both arms.
    """
    measured = "received" if args.apply_to == "gradient" else "applied"
    # The kernels GC is meant to touch: conv_only keeps rank > 3, as centralize.
    targeted = [k for k, rank in kernels.items() if not args.conv_only or rank > 3]
    worst: dict[str, dict[str, dict[str, float]]] = {}
    for arm in ARMS:
        arm_runs = [r for r in runs if r["arm"] == arm]
        worst[arm] = {
            q: {k: max(r["fan_in_ratio"][q][k] for r in arm_runs) for k in kernels}
            for q in ("received", "applied")
        }
    gc_max = max(worst["gc"][measured][k] for k in targeted)
    base_max = max(worst["baseline"][measured][k] for k in targeted)
    if gc_max > CENTRED_BELOW:
        active = "no"
    elif base_max < UNCENTRED_ABOVE:
        active = "inconclusive"  # the baseline is centred too: nothing to tell
    else:
        active = "yes"
    return {
        "active": active,
        "measured": {
            "received": "the gradient entering the optimizer",
            "applied": "the applied update",
        }[measured],
        "targeted_kernels": targeted,
        "gc_max": gc_max,
        "baseline_max": base_max,
        "per_kernel": worst,
    }


def summarize(
    runs: list[dict[str, Any]], kernels: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    """Per optimizer: arm means ± std, paired differences, verdicts, GC check."""
    summary: dict[str, Any] = {}
    for name in args.optimizers:
        mine = [r for r in runs if r["optimizer"] == name]
        by_arm = {
            arm: sorted((r for r in mine if r["arm"] == arm), key=lambda r: r["seed"])
            for arm in ARMS
        }
        final = {
            arm: {
                key: [
                    float(np.mean(r["epoch_time_s"]))
                    if key == "epoch_time_s"
                    else r["evals"][-1][key]
                    for r in by_arm[arm]
                ]
                for key, *_ in METRICS
            }
            for arm in ARMS
        }
        arms = {
            arm: {key: mean_std(final[arm][key]) for key, *_ in METRICS}
            | {"compile_time_s": by_arm[arm][0]["compile_time_s"]}
            for arm in ARMS
        }
        diff = {
            key: paired_ci(np.subtract(final["gc"][key], final["baseline"][key]))
            for key, *_ in METRICS
        }
        summary[name] = {
            "hyperparameters": hyperparameters(name, args),
            "arms": arms,
            "difference": diff,
            "verdicts": {
                key: verdict(diff[key], better)
                for key, _, _, better in METRICS
                if better is not None
            },
            "gc_active": gc_active_check(mine, kernels, args),
        }
    return summary


def pm(stat: dict[str, Any], fmt: str) -> str:
    """``mean ± std``, or the value alone when there is one seed."""
    if len(stat["values"]) < 2:
        return f"{stat['mean']:{fmt}}"
    return f"{stat['mean']:{fmt}} ± {stat['std']:{fmt}}"


def plural(n: int, word: str) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def ci_text(ci: dict[str, Any], fmt: str) -> str:
    """``+mean [low, high]``."""
    if ci["ci_low"] is None:
        return f"{ci['mean']:+{fmt}} [n/a]"
    return f"{ci['mean']:+{fmt}} [{ci['ci_low']:+{fmt}}, {ci['ci_high']:+{fmt}}]"


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
    if recipe["recipe"] is not None:
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
        rows = []
        for key, label, fmt, _ in METRICS:
            rows.append(
                (
                    label,
                    pm(s["arms"]["gc"][key], fmt),
                    pm(s["arms"]["baseline"][key], fmt),
                    ci_text(s["difference"][key], fmt),
                )
            )
        rows.insert(
            1,
            (
                "compile (s)",
                f"{s['arms']['gc']['compile_time_s']:.2f}",
                f"{s['arms']['baseline']['compile_time_s']:.2f}",
                "",
            ),
        )
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
            widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
            lines += ["", f"== {name} ({hp}) =="]
            for r in [head, *rows]:
                cells = (c.ljust(w) for c, w in zip(r, widths, strict=True))
                lines.append("  ".join(cells).rstrip())
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
    """One row per optimizer, arm, seed and epoch."""
    cols = ["optimizer", "arm", "seed", "epoch", "step", "train_time_s"]
    cols += ["eval_time_s"]
    cols += ["train_loss", "train_acc", "test_loss", "test_acc"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        for r in res["runs"]:
            for e in r["evals"]:
                writer.writerow({"optimizer": r["optimizer"], "arm": r["arm"]} | e)


def environment() -> dict[str, Any]:
    """Versions and machine, for the record."""
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "optax": optax.__version__,
        "flax": flax.__version__,
        "optax_gc": getattr(optax_gc, "__version__", None),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--dataset",
        default="digits",
        choices=datasets.DATASETS,
        help="default digits (bundled with scikit-learn, offline)",
    )
    p.add_argument(
        "--data-dir", default=None, help="folder with the IDX files (MNIST-style)"
    )
    p.add_argument(
        "--optimizers",
        default=",".join(OPTIMIZERS),
        help=f"comma-separated subset of {','.join(OPTIMIZERS)} (default: all)",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs seeds 0..N-1 (3)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="default per dataset: "
        + ", ".join(f"{k} {v[0]}" for k, v in DEFAULTS.items()),
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="default per dataset: "
        + ", ".join(f"{k} {v[1]}" for k, v in DEFAULTS.items()),
    )
    p.add_argument(
        "--lr-rmsprop", type=float, default=1e-4, help="1e-4, as the article"
    )
    p.add_argument(
        "--lr-sgd", type=float, default=0.01, help=f"0.01, momentum {SGD_MOMENTUM}"
    )
    p.add_argument("--lr-adam", type=float, default=1e-3, help="1e-3")
    p.add_argument(
        "--conv-only", action="store_true", help="GC on conv kernels only (GCC)"
    )
    p.add_argument(
        "--apply-to",
        default="gradient",
        choices=("gradient", "update"),
        help="GC on the gradient (default, the paper) or on the optimizer's step",
    )
    p.add_argument(
        "--out", default=None, help="output folder (outputs/compare-<dataset>)"
    )
    p.add_argument(
        "--train-limit", type=int, default=None, help="use the first N train images"
    )
    p.add_argument(
        "--test-limit", type=int, default=None, help="use the first N held-out images"
    )
    p.add_argument(
        "--evals-per-epoch",
        type=int,
        default=1,
        help="held-out evaluations per epoch (points on the curves, 1); train "
        "metrics are then running means since the previous one",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    args.optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = sorted(set(args.optimizers) - set(OPTIMIZERS))
    if unknown or not args.optimizers:
        p.error(f"--optimizers: {unknown or 'none'} not in {','.join(OPTIMIZERS)}")
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    epochs, batch = DEFAULTS[args.dataset]
    args.epochs = epochs if args.epochs is None else args.epochs
    args.batch_size = batch if args.batch_size is None else args.batch_size
    if args.epochs < 1 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be at least 1")
    args.out = args.out or f"outputs/compare-{args.dataset}"
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the comparison, prints the tables and writes the output folder.

    Args:
      argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
      Everything written to ``results.json``: ``config``, ``environment``,
      ``dataset``, ``runs`` (per optimizer, arm and seed: the initial-state
      checksum, compile time, per-epoch metrics and timings, fan-in ratios)
      and ``summary`` (per optimizer: arm means ± std, paired differences
      with 95% CIs, verdicts, the GC-active check), plus ``text``.
    """
    args = parse_args(argv)
    start = time.perf_counter()
    data = datasets.load(args.dataset, data_dir=args.data_dir)
    x_train = data.train_images[: args.train_limit]
    y_train = data.train_labels[: args.train_limit]
    x_test = data.test_images[: args.test_limit]
    y_test = data.test_labels[: args.test_limit]
    steps = len(y_train) // args.batch_size
    if steps == 0:
        raise ValueError(
            f"--batch-size {args.batch_size} is larger than the {len(y_train)} "
            "training images: lower it or raise --train-limit."
        )
    if not 1 <= args.evals_per_epoch <= steps:
        raise ValueError(
            f"--evals-per-epoch {args.evals_per_epoch} must be between 1 and the "
            f"{steps} steps of an epoch."
        )
    # Steps [first, last) between two held-out evaluations within an epoch.
    ends = [
        round(steps * (j + 1) / args.evals_per_epoch)
        for j in range(args.evals_per_epoch)
    ]
    segments = list(zip([0, *ends[:-1]], ends, strict=True))
    shape = tuple(int(d) for d in x_train.shape[1:])
    images, labels = jnp.asarray(x_train), jnp.asarray(y_train)
    test_batches = padded_batches(x_test, y_test, EVAL_BATCH)

    graphdef, eval_graphdef = graphdefs(shape, data.num_classes)
    params0, rngs0 = init_state(0, shape, data.num_classes)
    kernels = kernel_ranks(params0)
    tick = time.perf_counter()
    evaluate = jax.jit(make_evaluate(eval_graphdef))
    evaluate = evaluate.lower(params0, rngs0, *test_batches[0]).compile()
    eval_compile = time.perf_counter() - tick

    def held_out(params: Any, rngs: Any) -> tuple[float, float]:
        sums = [evaluate(params, rngs, *batch) for batch in test_batches]
        loss, hits = np.sum(jax.device_get(sums), axis=0)
        return float(loss) / len(y_test), float(hits) / len(y_test)

    runs: list[dict[str, Any]] = []
    recipes: dict[str, Any] = {}
    total = len(args.optimizers) * len(ARMS) * args.seeds * args.epochs * steps
    bar = tqdm(
        total=total,
        unit="step",
        disable=args.no_progress,
        file=sys.stderr,
        mininterval=1.0,
    )
    for name in args.optimizers:
        txs = {arm: arm_tx(name, arm, args) for arm in ARMS}
        recipes[name] = recipe_check(name, args, txs["gc"], params0)
        compiled: dict[str, Any] = {}
        compile_times: dict[str, float] = {}
        for seed in range(args.seeds):
            # Alternate which arm goes first so that slow drifts of a busy
            # machine do not always land on the same arm's timings.
            for arm in ARMS if seed % 2 == 0 else ARMS[::-1]:
                bar.set_description(f"{name} {arm} seed {seed}")
                tx = txs[arm]
                params, rngs = init_state(seed, shape, data.num_classes)
                opt_state = (
                    tx.before.init(params),
                    tx.optimizer.init(params),
                    tx.after.init(params),
                )
                run: dict[str, Any] = {
                    "optimizer": name,
                    "arm": arm,
                    "seed": seed,
                    "init_checksum": checksum(params, rngs),
                    "epoch_time_s": [],
                    "evals": [],
                    "fan_in_ratio": {"received": {}, "applied": {}},
                }
                if arm not in compiled:  # once per optimizer and arm
                    tick = time.perf_counter()
                    compiled[arm] = (
                        jax.jit(make_train_step(graphdef, tx))
                        .lower(
                            params,
                            opt_state,
                            rngs,
                            zero_totals(kernels),
                            images,
                            labels,
                            np.zeros(args.batch_size, np.int32),
                        )
                        .compile()
                    )
                    compile_times[arm] = time.perf_counter() - tick
                run["compile_time_s"] = compile_times[arm]
                order = np.random.default_rng(seed)  # same batches for both arms
                for epoch in range(args.epochs):
                    perm = order.permutation(len(y_train)).astype(np.int32)
                    run["epoch_time_s"].append(0.0)
                    for first, last in segments:
                        tick = time.perf_counter()
                        totals = zero_totals(kernels)
                        for i in range(first, last):
                            batch = perm[
                                i * args.batch_size : (i + 1) * args.batch_size
                            ]
                            params, opt_state, rngs, totals = compiled[arm](
                                params, opt_state, rngs, totals, images, labels, batch
                            )
                        totals = jax.device_get(totals)  # waits for the last step
                        train_time = time.perf_counter() - tick
                        run["epoch_time_s"][-1] += train_time
                        tick = time.perf_counter()
                        test_loss, test_acc = held_out(params, rngs)
                        run["evals"].append(
                            {
                                "seed": seed,
                                "epoch": epoch + last / steps,
                                "step": epoch * steps + last,
                                "train_time_s": train_time,
                                "eval_time_s": time.perf_counter() - tick,
                                "train_loss": float(totals["loss"]) / (last - first),
                                "train_acc": float(totals["acc"]) / (last - first),
                                "test_loss": test_loss,
                                "test_acc": test_acc,
                            }
                        )
                        for q, worst in run["fan_in_ratio"].items():
                            for k in kernels:
                                worst[k] = max(worst.get(k, 0.0), float(totals[q][k]))
                        bar.update(last - first)
                runs.append(run)
    bar.close()

    summary = summarize(runs, kernels, args)
    for name, s in summary.items():
        s["recipe_check"] = recipes[name]
    res: dict[str, Any] = {
        "command": shlex.join(
            [
                "python",
                "-m",
                "examples.compare",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "config": {k: v for k, v in vars(args).items() if k != "no_progress"},
        "environment": environment(),
        "dataset": {
            "name": data.name,
            "source": data.source,
            "n_train": len(y_train),
            "n_test": len(y_test),
            "image_shape": list(shape),
            "num_classes": data.num_classes,
            "steps_per_epoch": steps,
        },
        "kernels": list(kernels),
        "eval_compile_time_s": eval_compile,
        "runs": runs,
        "summary": summary,
    }
    text = report(res, markdown=False)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res["total_time_s"] = time.perf_counter() - start
    (out / "summary.md").write_text(report(res, markdown=True) + "\n")
    write_csv(res, out / "results.csv")
    plot_curves(res, out / "curves.png")
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"\nWrote {out}/results.json, results.csv, curves.png and summary.md. "
        f"Total {res['total_time_s']:.0f} s."
    )
    return res | {"text": text}


if __name__ == "__main__":
    main()
