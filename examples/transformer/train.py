"""A character-level transformer trained with and without GC on its fan-in axes.

The text is the docstrings of a fixed list of standard-library modules, read
from the running Python: no download, no data files. For each seed the same
initialisation and the same batches go to every arm:

* ``gc``: ``optax.chain(optax_gc.centralize(reduction_axes=fan_in_axes(model)),
  optimizer)``: every kernel centralized over its true fan-in (attention
  query/key/value kernels over the input axis, per head; the output kernel
  over heads and head_dim), and embeddings, norms and biases left alone;
* ``baseline``: the optimizer alone;
* ``rank_rule`` (off by default): plain ``optax_gc.centralize()``, whose rank
  rule (every axis but the last) mixes the heads, centralizes the per-head
  q/k/v biases over the heads and the embedding tables over the vocabulary.

It reports train and held-out loss per arm (mean ± std over seeds), the paired
per-seed difference to the baseline with a 95% t interval and a verdict, and
three checks: GC was active (the gradient entering the optimizer has zero
fan-in mean per output unit, per head for attention, with GC and not
without), GC left biases, norms and embeddings alone, and under plain SGD
every output unit's fan-in weight sum stays where it started while biases,
norms and embeddings train.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
import re
import string
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import optax_gc
from examples.common import diagnostics, optim, stats
from examples.transformer.models import CharTransformer
from optax_gc.flax import fan_in_axes

# Pure-Python standard-library modules with plenty of prose in docstrings;
# all ship with every CPython, so the corpus needs no download. Their text
# changes a little between Python versions, and so do the numbers.
MODULES = (
    "argparse", "ast", "calendar", "collections", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "difflib", "email.message", "enum",
    "fractions", "functools", "heapq", "http.client", "inspect", "ipaddress",
    "json", "logging", "pathlib", "pickle", "random", "shutil", "statistics",
    "string", "subprocess", "tarfile", "textwrap", "threading", "typing",
    "unittest.case", "urllib.parse", "zipfile",
)  # fmt: skip
ARMS = ("gc", "baseline", "rank_rule")
# The "GC active" check, on max |per-unit fan-in mean| / RMS of a kernel's
# gradient: float32 rounding gives about 1e-7 after GC; raw gradients 1e-2+.
CENTRED_BELOW = 1e-5
UNCENTRED_ABOVE = 1e-3


def _docstrings(module: Any) -> list[str]:
    """The module's docstring, then its public classes' and functions' docs."""
    docs = [inspect.getdoc(module)]
    # vars(), not getattr(): some modules warn from a module __getattr__.
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            docs.append(inspect.getdoc(obj))
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                member = getattr(member, "__func__", member)  # static/classmethod
                if not attr.startswith("_") and (
                    inspect.isfunction(member) or isinstance(member, property)
                ):
                    docs.append(inspect.getdoc(member))
    return [d for d in docs if d]


def load_corpus(max_chars: int) -> str:
    """Docstrings of :data:`MODULES`, de-duplicated, printable ASCII only.

    Raises:
        RuntimeError: under ``python -OO``, which strips docstrings.
    """
    if sys.flags.optimize >= 2:
        raise RuntimeError(
            "python -OO strips docstrings, the text this example trains on. "
            "Run it without -OO."
        )
    seen: dict[str, None] = {}
    with warnings.catch_warnings():
        # Reading a deprecated object's docstring may warn (typing.io on 3.11).
        warnings.simplefilter("ignore", DeprecationWarning)
        for name in MODULES:
            for doc in _docstrings(importlib.import_module(name)):
                seen.setdefault(doc)
    text = "\n\n".join(seen)
    keep = set(string.printable) - set("\t\r\x0b\x0c")
    return "".join(c for c in text if c in keep)[:max_chars]


class Corpus(NamedTuple):
    """The text as ids: vocabulary, train and held-out parts (the last ones)."""

    vocab: str
    train: np.ndarray
    held_out: np.ndarray


def make_corpus(config: ml_collections.ConfigDict) -> Corpus:
    """Encodes the corpus; the held-out part is its last ``held_out_fraction``."""
    text = load_corpus(config.corpus_chars)
    vocab = "".join(sorted(set(text)))
    ids = np.frombuffer(text.encode("ascii"), np.uint8)
    lookup = np.zeros(128, np.int32)
    lookup[np.frombuffer(vocab.encode("ascii"), np.uint8)] = np.arange(len(vocab))
    ids = lookup[ids]
    cut = len(ids) - int(len(ids) * config.held_out_fraction)
    if min(cut, len(ids) - cut) <= config.context + 1:
        raise ValueError(
            f"corpus_chars={config.corpus_chars} leaves too little text for a "
            f"context of {config.context}; raise corpus_chars."
        )
    return Corpus(vocab, ids[:cut], ids[cut:])


def windows(ids: np.ndarray, starts: np.ndarray, context: int) -> np.ndarray:
    """Windows of ``context + 1`` ids from each start: inputs and targets."""
    return ids[starts[..., None] + np.arange(context + 1)]


def make_model(config: ml_collections.ConfigDict, vocab_size: int, seed: int):
    """The transformer of the config, initialised from ``nnx.Rngs(seed)``."""
    sizes = {k: config[k] for k in ("context", "dim", "heads", "layers", "mlp_ratio")}
    return CharTransformer(vocab_size, **sizes, rngs=nnx.Rngs(seed))


def loss_fn(model: CharTransformer, batch: jax.Array) -> jax.Array:
    """Mean next-character cross-entropy (nats per character)."""
    logits = model(batch[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()


def arm_tx(
    arm: str, axes: dict, kernels: dict[str, tuple[int, ...]], base: Any
) -> optax.GradientTransformation:
    """The arm's chain: [GC,] probe, optimizer. The probe is element 1."""
    gc = {
        "gc": optax_gc.centralize(reduction_axes=axes),
        "baseline": optax.identity(),
        "rank_rule": optax_gc.centralize(),
    }[arm]
    return optax.chain(gc, diagnostics.fan_in_probe(kernels), base)


@nnx.jit
def train_step(model: CharTransformer, optimizer: nnx.Optimizer, batch: jax.Array):
    """One step; returns the loss."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def evaluate(model: CharTransformer, batch: jax.Array) -> jax.Array:
    """Mean loss over a batch of windows (n, context + 1)."""
    return loss_fn(model, batch)


def train_run(
    config: ml_collections.ConfigDict,
    corpus: Corpus,
    tx: optax.GradientTransformation,
    seed: int,
    eval_sets: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Trains one arm for one seed: same init and batches for every arm."""
    model = make_model(config, len(corpus.vocab), seed)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    rng = np.random.default_rng(seed)
    starts = rng.integers(
        0, len(corpus.train) - config.context - 1, (config.steps, config.batch_size)
    )
    curve, times, compile_s = [], [], 0.0
    for step in range(config.steps):
        batch = windows(corpus.train, starts[step], config.context)
        t0 = time.perf_counter()
        loss = train_step(model, optimizer, batch)
        loss.block_until_ready()
        if step == 0:
            compile_s = time.perf_counter() - t0  # a cache hit after the first seed
        else:
            times.append(time.perf_counter() - t0)
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            point = {k: float(evaluate(model, v)) for k, v in eval_sets.items()}
            curve.append({"step": step + 1, "batch_loss": float(loss), **point})
    probe = {k: np.asarray(v[...]).tolist() for k, v in optimizer.opt_state[1].items()}
    return {
        "seed": seed,
        "train_loss": curve[-1]["train"],
        "held_out_loss": curve[-1]["held_out"],
        "step_ms": 1e3 * float(np.median(times)) if times else float("nan"),
        "first_step_s": compile_s,
        "curve": curve,
        "fan_in_ratio": probe,
    }


def rank_rule_differences(model: CharTransformer, axes: dict) -> list[dict[str, Any]]:
    """Leaves where plain ``centralize()``'s rank rule picks other axes."""
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    rank = optax_gc.default_reduction_axes(params)
    ours = jax.tree_util.tree_flatten_with_path(axes, is_leaf=diagnostics.is_axes)[0]
    theirs = dict(
        jax.tree_util.tree_flatten_with_path(rank, is_leaf=diagnostics.is_axes)[0]
    )
    shapes = {
        diagnostics.leaf_name(p): x.shape
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }
    return [
        {
            "param": diagnostics.leaf_name(p),
            "shape": list(shapes[diagnostics.leaf_name(p)]),
            "fan_in_axes": a,
            "rank_rule": theirs[p],
        }
        for p, a in ours
        if theirs[p] != a
    ]


def kind_of(name: str) -> str:
    """What a leaf that GC leaves alone is: embedding, norm or bias."""
    if name.endswith("embedding"):
        return "embeddings"
    if "norm" in name:
        return "norm parameters"
    return "biases"


def untouched_check(
    model: CharTransformer, axes: dict, batch: np.ndarray
) -> dict[str, Any]:
    """On one batch: GC changes every kernel's gradient and nothing else.

    Kernel changes are relative: max |GC(g) - g| / max |g|.
    """
    grads = nnx.to_pure_dict(nnx.state(nnx.grad(loss_fn)(model, batch), nnx.Param))
    gc = optax_gc.centralize(reduction_axes=axes)
    out = dict(jax.tree_util.tree_leaves_with_path(gc.update(grads, gc.init(grads))[0]))
    kernels = diagnostics.named_axes(axes)
    changed: dict[str, float] = {}
    alone: dict[str, list[float]] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        diff = float(jnp.abs(out[path] - g).max())
        if diagnostics.leaf_name(path) in kernels:
            changed[diagnostics.leaf_name(path)] = diff / float(jnp.abs(g).max())
        else:
            alone.setdefault(kind_of(diagnostics.leaf_name(path)), []).append(diff)
    return {
        "kernels_changed": changed,
        "left_alone": {
            k: {"count": len(v), "max_change": max(v)} for k, v in alone.items()
        },
    }


def hyperplane_check(
    config: ml_collections.ConfigDict, corpus: Corpus, axes: dict
) -> tuple[dict[str, Any], CharTransformer]:
    """Plain SGD: GC keeps each fan-in weight sum; the rest trains normally.

    Returns the numbers and the model the GC arm trained.
    """
    kernels = diagnostics.named_axes(axes)
    rng = np.random.default_rng(0)
    starts = rng.integers(
        0,
        len(corpus.train) - config.context - 1,
        (config.check_steps, config.batch_size),
    )
    out: dict[str, Any] = {}
    trained = {}
    for arm in ("gc", "baseline"):
        model = make_model(config, len(corpus.vocab), 0)
        sgd = optax.sgd(config.check_learning_rate)
        tx = (
            sgd
            if arm == "baseline"
            else optax.chain(
                optax_gc.centralize(reduction_axes=fan_in_axes(model)), sgd
            )
        )
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        for s in starts:
            _check_step(model, optimizer, windows(corpus.train, s, config.context))
        after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        changes = diagnostics.kernel_changes(before, after, kernels)
        # Embeddings, norms and biases: the largest change of each kind.
        others: dict[str, float] = {}
        flat = jax.tree_util.tree_leaves_with_path(before)
        for (path, w0), w1 in zip(flat, jax.tree.leaves(after), strict=True):
            if (name := diagnostics.leaf_name(path)) not in kernels:
                d = float(np.abs(np.subtract(w1, w0, dtype=np.float64)).max())
                others[kind_of(name)] = max(others.get(kind_of(name), 0.0), d)
        out[arm] = {
            "sum_change": max(changes["fan_in_sum"].values()),
            "kernel_change": max(changes["weight"].values()),
            "other_change": others,
        }
        trained[arm] = model
    return out, trained["gc"]


@nnx.jit
def _check_step(model, optimizer, batch):
    optimizer.update(model, nnx.grad(loss_fn)(model, batch))


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per arm: mean ± std; per other arm: paired difference to the baseline."""
    metrics = ("train_loss", "held_out_loss", "step_ms")
    summary: dict[str, Any] = {
        "arms": {
            arm: {m: stats.mean_std([r[m] for r in rs]) for m in metrics}
            | {"first_step_s": rs[0]["first_step_s"]}
            for arm, rs in runs.items()
        },
        "difference": {},
        "verdicts": {},
    }
    for arm, rs in runs.items():
        if arm == "baseline" or "baseline" not in runs:
            continue
        base = runs["baseline"]
        diff = {
            m: stats.paired_ci([a[m] - b[m] for a, b in zip(rs, base, strict=True)])
            for m in ("train_loss", "held_out_loss")
        }
        summary["difference"][arm] = diff
        summary["verdicts"][arm] = {
            m: stats.verdict(ci, higher_is_better=False, arm=arm)
            for m, ci in diff.items()
        }
    return summary


def gc_active(runs: dict[str, list[dict[str, Any]]], heads: int) -> dict[str, Any]:
    """Per kernel (blocks pooled): max ratio over steps, seeds and units per arm.

    Attention kernels also get one value per head.
    """
    out: dict[str, Any] = {}
    for arm, rs in runs.items():
        per: dict[str, Any] = {}
        for name in rs[0]["fan_in_ratio"]:
            ratios = np.max([np.asarray(r["fan_in_ratio"][name]) for r in rs], axis=0)
            group = re.sub(r"blocks/\d+/", "blocks/*/", name)
            entry = per.setdefault(group, {"max": 0.0})
            entry["max"] = max(entry["max"], float(ratios.max()))
            # q/k/v of the stacked blocks: (layers, heads, head_dim) units.
            if ratios.ndim == 3 and ratios.shape[1] == heads:
                head = ratios.max(axis=(0, 2))
                entry["per_head"] = np.maximum(entry.get("per_head", head), head)
        for entry in per.values():
            if "per_head" in entry:
                entry["per_head"] = entry["per_head"].tolist()
        out[arm] = per
    return out


def _axes_text(axes: Sequence[int] | None) -> str:
    """``(0, 1)`` or ``None``, also for axes read back from JSON (lists)."""
    return "None" if axes is None else str(tuple(axes))


def report(res: dict[str, Any]) -> str:
    """The printed summary."""
    cfg, data, s = res["config"], res["data"], res["summary"]
    arms = list(s["arms"])
    lines = [
        f"Character-level transformer on {data['chars']:,} characters of standard-"
        f"library docstrings (Python {data['python']}; vocabulary {data['vocab']}; "
        f"{data['train']:,} train / {data['held_out']:,} held-out). {cfg['layers']} "
        f"blocks, dim {cfg['dim']}, {cfg['heads']} heads, context {cfg['context']}; "
        f"{cfg['optimizer']} lr {cfg['learning_rate']:g}, batch {cfg['batch_size']}, "
        f"{cfg['steps']} steps, {cfg['seeds']} seeds, the same init and batches "
        "for every arm of a seed. Losses in nats per character on "
        f"{cfg['eval_windows']} fixed windows; mean ± sample std over seeds.",
        "",
        f"fan_in_axes(model) vs the rank rule of plain centralize() (every axis "
        f"but the last): {len(res['rank_rule_differences'])} leaves differ, e.g.",
    ]
    seen = set()
    for d in res["rank_rule_differences"]:
        group = re.sub(r"blocks/\d+/", "blocks/*/", d["param"])
        if group not in seen:
            seen.add(group)
            lines.append(
                f"    {group:<32} {tuple(d['shape'])!s:<14} "
                f"{_axes_text(d['fan_in_axes']):<7} vs {_axes_text(d['rank_rule'])}"
            )
    rows = [("metric", *arms, *(f"{a} - baseline [95% CI]" for a in s["difference"]))]
    for m, label, fmt in (
        ("train_loss", "train loss", ".4f"),
        ("held_out_loss", "held-out loss", ".4f"),
        ("step_ms", "ms per step", ".1f"),
    ):
        diffs = [
            stats.ci_text(s["difference"][a][m], fmt) if m in s["difference"][a] else ""
            for a in s["difference"]
        ]
        rows.append((label, *(stats.pm(s["arms"][a][m], fmt) for a in arms), *diffs))
    rows.append(
        (
            "compile + step 1 (s)",
            *(f"{s['arms'][a]['first_step_s']:.1f}" for a in arms),
            *("" for _ in s["difference"]),
        )
    )
    lines += ["", *stats.text_table(rows)]
    for arm, v in s["verdicts"].items():
        lines.append(
            f"Verdict, {arm}: held-out loss: {v['held_out_loss']}; train loss: "
            f"{v['train_loss']}."
        )
    act = res["gc_active"]
    lines += [
        "",
        "Is GC active? Max |fan-in mean| / RMS of the gradient entering "
        f"{cfg['optimizer']}, per output unit, over all steps and seeds:",
    ]
    rows = [("kernel", *arms)]
    for group in act[arms[0]]:
        rows.append((group, *(f"{act[a][group]['max']:.1e}" for a in arms)))
        if "per_head" in act[arms[0]][group]:
            rows.append(
                (
                    "    per head",
                    *(
                        " ".join(f"{h:.0e}" for h in act[a][group]["per_head"])
                        for a in arms
                    ),
                )
            )
    lines += stats.text_table(rows)
    top = res["active"]
    lines.append(
        f"GC active: {top['verdict']} (largest {top['gc']:.1e} with GC vs "
        f"{top['baseline']:.1e} without)."
    )
    u = res["untouched"]
    alone = ", ".join(
        f"{v['count']} {k} (max |GC(g) - g| {v['max_change']:.1e})"
        for k, v in u["left_alone"].items()
    )
    lines.append(
        f"Left alone by GC, on one batch: {alone}. GC changed every kernel's "
        f"gradient (max |GC(g) - g| / max |g| from "
        f"{min(u['kernels_changed'].values()):.1e} to "
        f"{max(u['kernels_changed'].values()):.1e})."
    )
    h = res["hyperplane"]
    others = ", ".join(f"{k} {v:.1e}" for k, v in h["gc"]["other_change"].items())
    lines.append(
        f"Plain SGD (lr {cfg['check_learning_rate']:g}), {cfg['check_steps']} steps: "
        f"largest change of an output unit's fan-in weight sum: GC "
        f"{h['gc']['sum_change']:.1e}, baseline {h['baseline']['sum_change']:.1e}; "
        f"with GC the kernels moved up to {h['gc']['kernel_change']:.1e} and "
        f"{others} (they train normally)."
    )
    lines.append(
        f"(Paired 95% t intervals over {cfg['seeds']} seeds detect only "
        "differences larger than the seed-to-seed spread.)"
    )
    return "\n".join(lines)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    *,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains every arm for every seed, runs the checks, prints the summary.

    Args:
        config: see ``configs/default.py``.
        workdir: if given, ``results.json`` is written there.
        echo: where the summary goes (``print``).

    Returns:
        Everything printed, as numbers: per-arm runs and curves, the summary
        with paired intervals and verdicts, and the checks.
    """
    start = time.perf_counter()
    arms = [a.strip() for a in config.arms.split(",") if a.strip()]
    if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
        raise ValueError(f"arms={config.arms!r}: give distinct arms from {ARMS}.")
    corpus = make_corpus(config)
    model = make_model(config, len(corpus.vocab), 0)
    axes = fan_in_axes(model)
    kernels = diagnostics.named_axes(axes)
    pick = np.random.default_rng(12345)  # the same evaluation windows for all
    eval_sets = {
        name: windows(
            ids,
            pick.integers(0, len(ids) - config.context - 1, (config.eval_windows,)),
            config.context,
        )
        for name, ids in (("train", corpus.train), ("held_out", corpus.held_out))
    }
    base = optim.base_optimizer(
        config.optimizer, config.learning_rate, momentum=config.momentum
    )
    runs: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        tx = arm_tx(arm, axes, kernels, base)  # one per arm: one compilation
        runs[arm] = [
            train_run(config, corpus, tx, seed, eval_sets)
            for seed in range(config.seeds)
        ]
    summary = summarize(runs)
    active = gc_active(runs, config.heads)
    res: dict[str, Any] = {
        "config": config.to_dict(),
        "data": {
            "chars": len(corpus.train) + len(corpus.held_out),
            "vocab": len(corpus.vocab),
            "train": len(corpus.train),
            "held_out": len(corpus.held_out),
            "python": platform.python_version(),
        },
        "fan_in_axes": {k: list(v) for k, v in kernels.items()},
        "rank_rule_differences": rank_rule_differences(model, axes),
        "runs": runs,
        "summary": summary,
        "gc_active": active,
    }
    # GC's effect on one batch's gradient, on the model plain SGD with GC
    # trained: a fresh LayerNorm (scale 1, bias 0) gives the kernels right
    # after it gradients that are centred already, a trained one does not.
    res["hyperplane"], trained = hyperplane_check(config, corpus, axes)
    batch = windows(corpus.train, np.arange(config.batch_size), config.context)
    res["untouched"] = untouched_check(trained, axes, batch)
    if "gc" in active and "baseline" in active:
        gc_max = max(v["max"] for v in active["gc"].values())
        base_max = max(v["max"] for v in active["baseline"].values())
        ok = gc_max < CENTRED_BELOW and base_max > UNCENTRED_ABOVE
        res["active"] = {
            "verdict": "yes" if ok else "no",
            "gc": gc_max,
            "baseline": base_max,
        }
    else:
        res["active"] = {"verdict": "n/a", "gc": float("nan"), "baseline": float("nan")}
    res["seconds"] = time.perf_counter() - start
    res["text"] = report(res) + f"\nDone in {res['seconds']:.0f} s."
    echo(res["text"])
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(
                {k: v for k, v in res.items() if k != "text"},
                f,
                indent=1,
                default=lambda o: np.asarray(o).tolist(),
            )
    return res
