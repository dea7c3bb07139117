"""GC vs no GC, measured honestly: seeds, held-out data, spread and paired CIs.

Trains the article's CNN (Conv 16/32/64 3x3 with max-pooling, dropout, Dense
512, softmax over the classes; ``examples/nnx_cnn/models.py``) twice per seed
and optimizer: once with Gradient Centralization (``optax_gc.centralize()``
ahead of the optimizer, or on its step with ``apply_to="update"``) and once
with the plain optax optimizer and the same hyperparameters. Both arms of a
seed start from the same initialisation and see the same batches and dropout
masks, so the per-seed difference isolates GC. ``report.py`` turns the runs
into tables, a CSV, curves and a Markdown summary.

With ``--config.model=resnet`` it trains a CIFAR-style ResNet with BatchNorm
(``examples/common/resnet.py``) with the authors' SGD recipe instead: every
arm is ``optax_gc.sgd(schedule, momentum=0.9, weight_decay=5e-4, ...)``
followed by one probe; the baseline is that recipe with GC masked off
everywhere (``gc_mask`` all False), and the arms ``gc`` (SGD_GC), ``gcc``
(SGD_GCC, ``conv_only=True``) and ``gc_update`` (``apply_to="update"``) are
each compared with it, seed by seed. SGD with momentum is linear, so with any
of them the applied update is centred; with coupled decay the decay gradient
``wd * w`` is centralized too (the authors' order), so every targeted
kernel's fan-in weight sums stay where they were initialised even with weight
decay, which ``kernel_changes`` measures for each run.

How GC is checked: each arm's chain holds two recording identity
transformations (``examples/common/diagnostics.fan_in_probe``), one right
ahead of the optimizer and one after everything, which keep per kernel the
largest |per-output fan-in mean| relative to the kernel's RMS of the gradient
the optimizer receives and of the update it applies. With GC on the gradient
the first is ~1e-7 and the second is not small for Adam and RMSprop, which
rescale each entry after GC; with GC on the update the second is ~1e-7. The
check reports the quantity GC produced, and confirms once that the GC arm's
chain equals the package's recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import optax_gc
from examples import datasets
from examples.common import cli, diagnostics, evaluate, optim, stats
from examples.common.resnet import ResNet
from examples.compare import report
from examples.compare.configs import default
from examples.nnx_cnn.models import CNN

ARMS = ("gc", "baseline")
MODELS = ("cnn", "resnet")
# The ResNet's GC arms: the options of optax_gc.sgd each one sets, and its
# name in the authors' code.
RESNET_ARMS: dict[str, dict[str, Any]] = {
    "gc": {"conv_only": False, "apply_to": "gradient", "title": "SGD_GC"},
    "gcc": {"conv_only": True, "apply_to": "gradient", "title": "SGD_GCC"},
    "gc_update": {
        "conv_only": False,
        "apply_to": "update",
        "title": "SGD with GC on the update",
    },
}
# The ResNet's epochs per dataset when config.epochs is None (batch 128).
RESNET_EPOCHS = {
    "digits": 30,
    "fashion_mnist": 6,
    "mnist": 6,
    "cifar10": 30,
    "horses_or_humans": 30,
}
# The CNN fields that model="resnet" does not use: they must stay default.
CNN_ONLY = ("optimizers", "lr_rmsprop", "lr_sgd", "lr_adam", "conv_only", "apply_to")
SGD_MOMENTUM = 0.9
# Per dataset: (epochs, batch size). Digits is small: RMSprop at the
# article's lr of 1e-4 needs a few hundred steps before it learns much.
# Horses or Humans: 150x150 RGB, two classes (softmax over 2 logits here).
DEFAULTS = {
    "digits": (20, 32),
    "fashion_mnist": (3, 128),
    "mnist": (3, 128),
    "horses_or_humans": (10, 32),
    "cifar10": (10, 128),
}
EVAL_BATCH = 1000
# Thresholds of the "GC active" check, on max |per-output fan-in mean| / RMS:
# float32 rounding leaves ~1e-7 after GC; raw gradients sit near 1e-2..1.
CENTRED_BELOW = 1e-4
UNCENTRED_ABOVE = 1e-3
# Where the probes sit in an arm's chain (see ``arm_tx`` and ``resnet_tx``).
RECEIVED, APPLIED = 1, 4
PROBES = {"cnn": {"received": RECEIVED, "applied": APPLIED}, "resnet": {"applied": 1}}


def settings(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
    """The config checked, with the per-dataset defaults and the output folder.

    Raises:
      ValueError: naming the config field that is out of range.
    """
    if config.dataset not in DEFAULTS:
        raise ValueError(f"config.dataset={config.dataset!r}: use one of {DEFAULTS}.")
    if config.model not in MODELS:
        raise ValueError(f"config.model={config.model!r}: use one of {MODELS}.")
    names = [o.strip() for o in config.optimizers.split(",") if o.strip()]
    unknown = sorted(set(names) - set(optim.OPTIMIZERS))
    if unknown or not names:
        raise ValueError(
            f"config.optimizers={config.optimizers!r}: {unknown or 'none'} not in "
            f"{','.join(optim.OPTIMIZERS)}."
        )
    if config.apply_to not in ("gradient", "update"):
        raise ValueError(
            f"config.apply_to={config.apply_to!r}: 'gradient' or 'update'."
        )
    epochs, batch = DEFAULTS[config.dataset]
    arms = [a.strip() for a in config.resnet_arms.split(",") if a.strip()]
    if config.model == "resnet":
        epochs, batch = RESNET_EPOCHS[config.dataset], 128
        base = default.get_config()
        changed = [k for k in CNN_ONLY if config[k] != base[k]]
        if changed:
            raise ValueError(
                f"config.{changed[0]} is an option of model='cnn'; with "
                "model='resnet' the arms are config.resnet_arms (all optax_gc.sgd)."
            )
        unknown = sorted(set(arms) - set(RESNET_ARMS))
        if unknown or not arms:
            raise ValueError(
                f"config.resnet_arms={config.resnet_arms!r}: {unknown or 'none'} "
                f"not in {','.join(RESNET_ARMS)}."
            )
        for key in ("resnet_blocks", "resnet_width"):
            if config[key] < 1:
                raise ValueError(f"config.{key} must be at least 1, got {config[key]}.")
        for key in ("resnet_lr", "resnet_weight_decay", "resnet_warmup_epochs"):
            if config[key] < 0:
                raise ValueError(f"config.{key} must be >= 0, got {config[key]}.")
    out = {
        "model": config.model,
        "dataset": config.dataset,
        "data_dir": config.data_dir,
        "optimizers": names,
        "seeds": config.seeds,
        "epochs": epochs if config.epochs is None else config.epochs,
        "batch_size": batch if config.batch_size is None else config.batch_size,
        "lr_rmsprop": config.lr_rmsprop,
        "lr_sgd": config.lr_sgd,
        "lr_adam": config.lr_adam,
        "conv_only": config.conv_only,
        "apply_to": config.apply_to,
        "out": workdir or f"outputs/compare-{config.dataset}",
        "train_limit": config.train_limit,
        "test_limit": config.test_limit,
        "evals_per_epoch": config.evals_per_epoch,
    }
    if config.model == "resnet":
        out |= {
            "optimizers": ["sgd"],
            "resnet_arms": arms,
            "resnet_blocks": config.resnet_blocks,
            "resnet_width": config.resnet_width,
            "resnet_lr": config.resnet_lr,
            "resnet_momentum": SGD_MOMENTUM,
            "resnet_weight_decay": config.resnet_weight_decay,
            "resnet_warmup_epochs": config.resnet_warmup_epochs,
        }
    for key in ("seeds", "epochs", "batch_size"):
        if out[key] < 1:
            raise ValueError(f"config.{key} must be at least 1, got {out[key]}.")
    return out


def command(config: ml_collections.ConfigDict, workdir: str | None) -> str:
    """The command line that gives this config: the fields that differ."""
    return cli.command("examples.compare", config, default.get_config(), workdir)


def hyperparameters(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The optimizer's hyperparameters, shared by both arms (all numbers).

    For the ResNet, ``learning_rate`` is the schedule's peak.
    """
    if cfg["model"] == "resnet":
        return {
            "learning_rate": cfg["resnet_lr"],
            "momentum": SGD_MOMENTUM,
            "weight_decay": cfg["resnet_weight_decay"],
            "warmup_epochs": cfg["resnet_warmup_epochs"],
        }
    lr = {"learning_rate": cfg[f"lr_{name}"]}
    return lr | ({"momentum": SGD_MOMENTUM} if name == "sgd" else {})


def resnet_schedule(cfg: dict[str, Any], steps: int) -> optax.Schedule:
    """Linear warmup from 0 to ``resnet_lr``, then cosine decay to 0.

    Warmup over ``resnet_warmup_epochs`` epochs of ``steps`` steps, the decay
    over what is left of ``epochs``; every arm gets the same schedule.
    """
    total = cfg["epochs"] * steps
    warmup = min(round(cfg["resnet_warmup_epochs"] * steps), total - 1)
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg["resnet_lr"], warmup_steps=warmup, decay_steps=total, end_value=0.0
    )


def no_gc(params: Any) -> Any:
    """The baseline's ``gc_mask``: False for every leaf, GC touches nothing."""
    return jax.tree.map(lambda _: False, params)


def resnet_tx(
    arm: str,
    cfg: dict[str, Any],
    schedule: optax.Schedule,
    kernels: diagnostics.Axes,
) -> optax.GradientTransformation:
    """One ResNet arm: ``optax_gc.sgd`` (GC masked off in the baseline), a probe.

    The probe (at ``PROBES["resnet"]["applied"]``) records the applied update.
    """
    options = RESNET_ARMS.get(arm, {"conv_only": False, "apply_to": "gradient"})
    recipe = optax_gc.sgd(
        schedule,
        momentum=SGD_MOMENTUM,
        weight_decay=cfg["resnet_weight_decay"],
        gc_mask=no_gc if arm == "baseline" else None,
        conv_only=options["conv_only"],
        apply_to=options["apply_to"],
    )
    return optax.chain(recipe, diagnostics.fan_in_probe(kernels))


def resnet_reference(
    arm: str, cfg: dict[str, Any], schedule: optax.Schedule
) -> tuple[optax.GradientTransformation, str]:
    """The arm's algorithm from optax's own pieces, and its description.

    The baseline is L2 decay then plain ``optax.sgd``; SGD_GC/SGD_GCC
    centralize the decayed gradient ``GC(g + wd * w)`` ahead of it (the
    authors' order); GC on the update centralizes the momentum's output.
    """
    wd = cfg["resnet_weight_decay"]
    decay = optax.add_decayed_weights(wd)
    if arm == "baseline":
        return (
            optax.chain(decay, optax.sgd(schedule, momentum=SGD_MOMENTUM)),
            f"optax.chain(add_decayed_weights({wd:g}), optax.sgd(schedule, "
            f"momentum={SGD_MOMENTUM:g}))",
        )
    options = RESNET_ARMS[arm]
    gc = optax_gc.centralize(conv_only=options["conv_only"])
    gc_text = f"optax_gc.centralize(conv_only={options['conv_only']})"
    if options["apply_to"] == "update":
        return (
            optax.chain(
                decay,
                optax.trace(SGD_MOMENTUM),
                gc,
                optax.scale_by_learning_rate(schedule),
            ),
            f"optax.chain(add_decayed_weights({wd:g}), trace({SGD_MOMENTUM:g}), "
            f"{gc_text}, scale_by_learning_rate(schedule))",
        )
    return (
        optax.chain(decay, gc, optax.sgd(schedule, momentum=SGD_MOMENTUM)),
        f"optax.chain(add_decayed_weights({wd:g}), {gc_text}, "
        f"optax.sgd(schedule, momentum={SGD_MOMENTUM:g}))",
    )


def arm_tx(
    name: str, arm: str, cfg: dict[str, Any], kernels: diagnostics.Axes
) -> optax.GradientTransformation:
    """One arm's chain: GC (or not), a probe, the optimizer, GC (or not), a probe.

    GC sits before the optimizer (``apply_to="gradient"``) or after it
    (``"update"``) in the GC arm; the baseline has identities there. The probe
    at ``RECEIVED`` records what the optimizer receives, the one at
    ``APPLIED`` what is applied.
    """
    optimizer = optim.base_optimizer(name, **hyperparameters(name, cfg))
    gc = (
        optax_gc.centralize(conv_only=cfg["conv_only"])
        if arm == "gc"
        else optax.identity()
    )
    before, after = (gc, optax.identity())
    if cfg["apply_to"] == "update":
        before, after = after, before
    probe = diagnostics.fan_in_probe(kernels)
    return optax.chain(before, probe, optimizer, after, probe)


def recipe_check(
    name: str,
    cfg: dict[str, Any],
    tx: optax.GradientTransformation,
    params: Any,
    *,
    steps: int = 3,
) -> dict[str, Any]:
    """Whether the GC arm's chain equals the package's recipe for it.

    Runs both on the same made-up gradients (with per-output offsets, which GC
    removes) for a few steps, in float64, so that only a different algorithm
    shows. With ``apply_to="update"`` the recipe centralizes before the
    learning rate and the chain after it: equal in exact arithmetic.

    Returns:
      ``recipe`` (the call compared) and ``max_relative_difference``
      (largest |difference| of an update leaf over its largest |entry|).
    """
    recipe = getattr(optax_gc, name)(
        **hyperparameters(name, cfg),
        conv_only=cfg["conv_only"],
        apply_to=cfg["apply_to"],
    )
    options = f"conv_only={cfg['conv_only']}, apply_to={cfg['apply_to']!r}"
    return {
        "recipe": f"optax_gc.{name}(..., {options})",
        "max_relative_difference": max_difference(recipe, tx, params, steps=steps),
    }


def max_difference(
    reference: optax.GradientTransformation,
    tx: optax.GradientTransformation,
    params: Any,
    *,
    steps: int = 3,
) -> float:
    """Largest relative difference of two transformations' updates, in float64.

    Both run on the same made-up gradients (with per-output offsets, which GC
    removes) for ``steps`` steps; each update leaf's largest |difference| is
    divided by its largest |entry| (1 where that is 0).
    """

    @jax.jit  # one compilation, not one per eager operation and leaf shape
    def both(grads, state_r, state_c, params):
        upd_r, state_r = reference.update(grads, state_r, params)
        upd_c, state_c = tx.update(grads, state_c, params)
        return upd_r, upd_c, state_r, state_c, optax.apply_updates(params, upd_c)

    # In float64: Adam and RMSprop divide each entry by its own scale, which
    # turns float32 rounding of a near-zero centred entry (the two programs
    # may sum the mean in different orders) into visible differences.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda p: np.asarray(p, np.float64), params)
        state_r, state_c, worst = reference.init(params), tx.init(params), 0.0
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
    return worst


ModelSpec = tuple[Any, ...]


def model_spec(cfg: dict[str, Any]) -> ModelSpec:
    """The model as a hashable tuple: ``("cnn",)`` or ``("resnet", blocks, width)``."""
    if cfg["model"] == "resnet":
        return ("resnet", cfg["resnet_blocks"], cfg["resnet_width"])
    return ("cnn",)


def make_model(
    spec: ModelSpec,
    input_shape: tuple[int, int, int],
    num_classes: int,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """The article's CNN or the ResNet, as ``spec`` (see ``model_spec``) says."""
    if spec[0] == "resnet":
        return ResNet(
            input_shape, num_classes, blocks=spec[1], width=spec[2], rngs=rngs
        )
    return CNN(input_shape, num_classes, rngs=rngs)


def graphdefs(
    input_shape: tuple[int, int, int], num_classes: int, spec: ModelSpec = ("cnn",)
) -> tuple[nnx.GraphDef, nnx.GraphDef]:
    """The train-mode (dropout on, BN batch statistics) and eval-mode graphs.

    In eval mode dropout is off and BN uses its running averages.
    """
    model = nnx.eval_shape(
        lambda: make_model(spec, input_shape, num_classes, nnx.Rngs(0))
    )
    model.train()
    train = nnx.graphdef(model)
    model.eval()
    return train, nnx.graphdef(model)


def init_state(
    seed: int,
    input_shape: tuple[int, int, int],
    num_classes: int,
    spec: ModelSpec = ("cnn",),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params and the rest of the model's state for ``seed``, as pure dicts.

    The rest is the CNN's dropout random stream, or the ResNet's BN running
    statistics (``nnx.BatchStat``, never given to the optimizer). Both come
    from ``nnx.Rngs(seed)``, so every arm of a seed starts from the same
    point. Compiled once per model (see ``compiled_init``).
    """
    return compiled_init(input_shape, num_classes, spec)(seed)


@functools.cache
def compiled_init(
    input_shape: tuple[int, int, int], num_classes: int, spec: ModelSpec
) -> Callable[[int], tuple[dict[str, Any], dict[str, Any]]]:
    """The model's initialisation as one compiled program of the seed.

    One compilation instead of one per eager operation and shape. XLA:CPU
    spent 14 s optimizing the ResNet's (its random draws); it runs once per
    seed, so the ResNet's is compiled without backend optimization (1.3 s).
    """
    options = {"xla_backend_optimization_level": "0"} if spec[0] == "resnet" else None
    init = jax.jit(functools.partial(_init, input_shape, num_classes, spec))
    return init.lower(0).compile(compiler_options=options)


def _init(
    input_shape: tuple[int, int, int],
    num_classes: int,
    spec: ModelSpec,
    seed: jax.Array,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``init_state``'s program: build the model from the seed and split it."""
    # nnx.Rngs(int) is nnx.Rngs(jax.random.key(int)); a traced seed needs the key.
    model = make_model(spec, input_shape, num_classes, nnx.Rngs(jax.random.key(seed)))
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


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> Callable[..., Any]:
    """One train step as a pure function over split NNX state.

    Compiled once per optimizer and arm and reused for every seed, with no
    NNX Python overhead per step. Steps are called from a Python loop, not a
    ``lax.scan``: XLA:CPU ran this network's step about 5x slower inside a
    loop (measured: 510 ms against 90 ms of CPU per 28x28 batch of 128).

    Returns:
      ``train_step(params, opt_state, rngs, totals, images, labels, batch)``
      with ``batch`` the indices ``(batch_size,)`` of this step's images in
      the training set, returning the new ``(params, opt_state, rngs,
      totals)``; ``rngs`` is every variable that is not a param (dropout
      streams, BN statistics); ``totals`` sums the loss and accuracy over
      the steps, so that a stretch of steps needs one transfer to the host.
    """

    def loss_fn(params, rngs, x, y):
        model = nnx.merge(graphdef, params, rngs)
        logits = model(x)  # dropout on, BN on batch statistics: the train graphdef
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        # The CNN's advanced dropout stream, or the ResNet's updated BN stats.
        new_rngs = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))
        return loss, (logits, new_rngs)

    def train_step(params, opt_state, rngs, totals, images, labels, batch):
        x, y = images[batch], labels[batch]
        (loss, (logits, rngs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, rngs, x, y
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
        totals = {"loss": totals["loss"] + loss, "acc": totals["acc"] + acc}
        return params, opt_state, rngs, totals

    return train_step


def zero_totals() -> dict[str, jax.Array]:
    """The start of a stretch of steps' sums (see ``make_train_step``)."""
    return dict.fromkeys(("loss", "acc"), jnp.zeros((), jnp.float32))


def make_evaluate(graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """Summed held-out loss and hits of one padded batch, dropout off."""

    def eval_step(params, rngs, images, labels, weights):
        logits = nnx.merge(graphdef, params, rngs)(images)
        return evaluate.weighted_sums(logits, labels, weights)

    return eval_step


class Comparison(NamedTuple):
    """One paired comparison: a GC arm against the baseline of its optimizer.

    Attributes:
      name: its key in the summary (the optimizer's name for the CNN, the
        arm's for the ResNet).
      optimizer: the optimizer both arms use.
      arm: the GC arm's name (``"gc"`` for the CNN).
      conv_only: GC on conv kernels only.
      apply_to: ``"gradient"`` or ``"update"``.
      measured: the probe that shows GC's output: ``"received"`` (what the
        optimizer receives) or ``"applied"`` (the applied update).
    """

    name: str
    optimizer: str
    arm: str
    conv_only: bool
    apply_to: str
    measured: str


def comparisons(cfg: dict[str, Any]) -> list[Comparison]:
    """The comparisons the config asks for, in the order they are reported.

    The ResNet's arms are all SGD with momentum, which is linear: the applied
    update is centred whenever GC ran, on the gradient or on the update.
    """
    if cfg["model"] == "resnet":
        return [
            Comparison(
                arm,
                "sgd",
                arm,
                RESNET_ARMS[arm]["conv_only"],
                RESNET_ARMS[arm]["apply_to"],
                "applied",
            )
            for arm in cfg["resnet_arms"]
        ]
    measured = "received" if cfg["apply_to"] == "gradient" else "applied"
    return [
        Comparison(name, name, "gc", cfg["conv_only"], cfg["apply_to"], measured)
        for name in cfg["optimizers"]
    ]


def arm_names(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The arms trained per optimizer and seed: the GC arms and the baseline."""
    if cfg["model"] == "resnet":
        return ("baseline", *cfg["resnet_arms"])
    return ARMS


def gc_active_check(
    runs: list[dict[str, Any]],
    kernels: list[str],
    targeted: list[str],
    comparison: Comparison,
) -> dict[str, Any]:
    """Did GC run? Compares the right quantity across arms, over all steps.

    With ``apply_to="gradient"`` GC's output is the gradient the optimizer
    receives; Adam and RMSprop then rescale each entry, so their applied
    update is not centred even when GC ran. With ``"update"`` GC's output is
    the applied update, and so it is with SGD and momentum (linear) for
    either placement. Each is max |per-output fan-in mean| / RMS per kernel,
    maximised over steps and seeds; the kernels GC targets are the library's
    (``optax_gc.default_reduction_axes`` with ``conv_only``). In weight
    space: the largest change of an output unit's fan-in weight sum over
    training, per run and kernel (``diagnostics.kernel_changes``).

    Returns:
      ``active`` ("yes", "no", or "inconclusive" when the baseline's
      quantity is centred too), what was ``measured``, the
      ``targeted_kernels``, ``gc_max`` and ``baseline_max`` over those,
      ``per_kernel`` maxima of the recorded quantities for both arms (keys
      ``"gc"`` and ``"baseline"``), and ``fan_in_sum``: ``gc_max`` (the
      largest change of a targeted kernel's fan-in sums in any GC-arm run),
      ``baseline_min`` (the smallest such largest change in any baseline
      run) and ``per_kernel`` maxima over seeds for both arms.
    """
    measured = comparison.measured
    by_arm = {
        "gc": [r for r in runs if r["arm"] == comparison.arm],
        "baseline": [r for r in runs if r["arm"] == "baseline"],
    }
    worst: dict[str, dict[str, dict[str, float]]] = {}
    sums: dict[str, dict[str, float]] = {}
    for key, arm_runs in by_arm.items():
        worst[key] = {
            q: {k: max(r["fan_in_ratio"][q][k] for r in arm_runs) for k in kernels}
            for q in arm_runs[0]["fan_in_ratio"]
        }
        sums[key] = {
            k: max(r["fan_in_sum_change"][k] for r in arm_runs) for k in kernels
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
        "fan_in_sum": {
            "gc_max": max(sums["gc"][k] for k in targeted),
            "baseline_min": min(
                r["fan_in_sum_change"][k] for r in by_arm["baseline"] for k in targeted
            ),
            "per_kernel": sums,
        },
    }


def summarize(runs: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """Per comparison: arm means ± std, paired differences and verdicts."""
    summary: dict[str, Any] = {}
    for comp in comparisons(cfg):
        mine = [r for r in runs if r["optimizer"] == comp.optimizer]
        by_arm = {
            key: sorted((r for r in mine if r["arm"] == arm), key=lambda r: r["seed"])
            for key, arm in (("gc", comp.arm), ("baseline", "baseline"))
        }
        final = {
            arm: {
                key: [
                    float(np.mean(r["epoch_time_s"]))
                    if key == "epoch_time_s"
                    else r["evals"][-1][key]
                    for r in by_arm[arm]
                ]
                for key, *_ in report.METRICS
            }
            for arm in ARMS
        }
        arms = {
            arm: {key: stats.mean_std(final[arm][key]) for key, *_ in report.METRICS}
            | {"compile_time_s": by_arm[arm][0]["compile_time_s"]}
            for arm in ARMS
        }
        diff = {
            key: stats.paired_ci(np.subtract(final["gc"][key], final["baseline"][key]))
            for key, *_ in report.METRICS
        }
        entry = {
            "optimizer": comp.optimizer,
            "arm": comp.arm,
            "conv_only": comp.conv_only,
            "apply_to": comp.apply_to,
            "hyperparameters": hyperparameters(comp.optimizer, cfg),
            "arms": arms,
            "difference": diff,
            "verdicts": {
                key: stats.verdict(diff[key], higher_is_better=better)
                for key, _, _, better in report.METRICS
                if better is not None
            },
        }
        if cfg["model"] == "resnet":
            entry["title"] = RESNET_ARMS[comp.arm]["title"]
        summary[comp.name] = entry
    return summary


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


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | None = None
) -> dict[str, Any]:
    """Runs the comparison, prints the tables and writes the output folder.

    Args:
      config: as in ``configs/default.py``.
      workdir: the output folder (default ``outputs/compare-<dataset>``) for
        ``results.json``, ``results.csv``, ``curves.png`` and ``summary.md``.

    Returns:
      Everything written to ``results.json``: ``command``, ``config``,
      ``environment``, ``dataset``, ``model`` (its spec and sizes), ``runs``
      (per optimizer, arm and seed: the initial-state checksum, compile
      time, per-epoch metrics and timings, fan-in ratios, fan-in sum
      changes) and ``summary`` (per comparison, keyed by optimizer for the
      CNN and by GC arm for the ResNet: arm means ± std, paired differences
      with 95% CIs, verdicts, the GC-active check, the recipe check), plus
      ``text``.

    Raises:
      ValueError: for a config field out of range, naming it.
    """
    cfg = settings(config, workdir)
    start = time.perf_counter()
    data = datasets.load(cfg["dataset"], data_dir=cfg["data_dir"])
    x_train = data.train_images[: cfg["train_limit"]]
    y_train = data.train_labels[: cfg["train_limit"]]
    x_test = data.test_images[: cfg["test_limit"]]
    y_test = data.test_labels[: cfg["test_limit"]]
    batch_size, epochs = cfg["batch_size"], cfg["epochs"]
    steps = len(y_train) // batch_size
    if steps == 0:
        raise ValueError(
            f"config.batch_size {batch_size} is larger than the {len(y_train)} "
            "training images: lower it or raise config.train_limit."
        )
    if not 1 <= cfg["evals_per_epoch"] <= steps:
        raise ValueError(
            f"config.evals_per_epoch {cfg['evals_per_epoch']} must be between 1 "
            f"and the {steps} steps of an epoch."
        )
    # Steps [first, last) between two held-out evaluations within an epoch.
    ends = [
        round(steps * (j + 1) / cfg["evals_per_epoch"])
        for j in range(cfg["evals_per_epoch"])
    ]
    segments = list(zip([0, *ends[:-1]], ends, strict=True))
    shape = tuple(int(d) for d in x_train.shape[1:])
    images, labels = jnp.asarray(x_train), jnp.asarray(y_train)
    test_batches = [
        tuple(map(jnp.asarray, b))
        for b in evaluate.padded_batches(x_test, y_test, EVAL_BATCH)
    ]

    spec = model_spec(cfg)
    graphdef, eval_graphdef = graphdefs(shape, data.num_classes, spec)
    params0, rngs0 = init_state(0, shape, data.num_classes, spec)
    # Every kernel the rank rule gives axes; GC's targets among them.
    kernels = diagnostics.gc_axes(params0)
    tick = time.perf_counter()
    eval_step = jax.jit(make_evaluate(eval_graphdef))
    eval_step = eval_step.lower(params0, rngs0, *test_batches[0]).compile()
    eval_compile = time.perf_counter() - tick

    runs: list[dict[str, Any]] = []
    recipes: dict[str, Any] = {}
    names = arm_names(cfg)
    total = len(cfg["optimizers"]) * len(names) * cfg["seeds"] * epochs * steps
    bar = tqdm(
        total=total,
        unit="step",
        disable=not config.progress,
        file=sys.stderr,
        mininterval=1.0,
    )
    for name in cfg["optimizers"]:
        if cfg["model"] == "resnet":
            schedule = resnet_schedule(cfg, steps)
            txs = {arm: resnet_tx(arm, cfg, schedule, kernels) for arm in names}
            for arm in names:  # each arm against optax's own pieces
                reference, text = resnet_reference(arm, cfg, schedule)
                recipes[arm] = {
                    "recipe": text,
                    "max_relative_difference": max_difference(
                        reference, txs[arm], params0
                    ),
                }
            if "gc_update" in names:
                # GC is linear and so is SGD's momentum: they commute, and GC
                # on the update is SGD_GC up to rounding. Measured, in float64.
                gc_ref = resnet_reference("gc", cfg, schedule)[0]
                recipes["gc_update"]["same_as_sgd_gc"] = max_difference(
                    gc_ref, txs["gc_update"], params0
                )
        else:
            txs = {arm: arm_tx(name, arm, cfg, kernels) for arm in ARMS}
            recipes[name] = recipe_check(name, cfg, txs["gc"], params0)
        compiled: dict[str, Any] = {}
        compile_times: dict[str, float] = {}
        for seed in range(cfg["seeds"]):
            # Rotate which arm goes first so that slow drifts of a busy
            # machine do not always land on the same arm's timings.
            # (With two arms that alternates them.)
            turn = seed % len(names)
            for arm in names[turn:] + names[:turn]:
                bar.set_description(f"{name} {arm} seed {seed}")
                params, rngs = init_state(seed, shape, data.num_classes, spec)
                start_params = params
                opt_state = txs[arm].init(params)
                run: dict[str, Any] = {
                    "optimizer": name,
                    "arm": arm,
                    "seed": seed,
                    "init_checksum": checksum(params, rngs),
                    "epoch_time_s": [],
                    "evals": [],
                }
                if arm not in compiled:  # once per optimizer and arm
                    tick = time.perf_counter()
                    compiled[arm] = (
                        jax.jit(make_train_step(graphdef, txs[arm]))
                        .lower(
                            params,
                            opt_state,
                            rngs,
                            zero_totals(),
                            images,
                            labels,
                            np.zeros(batch_size, np.int32),
                        )
                        .compile()
                    )
                    compile_times[arm] = time.perf_counter() - tick
                run["compile_time_s"] = compile_times[arm]
                order = np.random.default_rng(seed)  # same batches for both arms
                for epoch in range(epochs):
                    perm = order.permutation(len(y_train)).astype(np.int32)
                    run["epoch_time_s"].append(0.0)
                    for first, last in segments:
                        tick = time.perf_counter()
                        totals = zero_totals()
                        for i in range(first, last):
                            batch = perm[i * batch_size : (i + 1) * batch_size]
                            params, opt_state, rngs, totals = compiled[arm](
                                params, opt_state, rngs, totals, images, labels, batch
                            )
                        totals = jax.device_get(totals)  # waits for the last step
                        train_time = time.perf_counter() - tick
                        run["epoch_time_s"][-1] += train_time
                        tick = time.perf_counter()
                        test = evaluate.evaluate(
                            functools.partial(eval_step, params, rngs), test_batches
                        )
                        run["evals"].append(
                            {
                                "seed": seed,
                                "epoch": epoch + last / steps,
                                "step": epoch * steps + last,
                                "train_time_s": train_time,
                                "eval_time_s": time.perf_counter() - tick,
                                "train_loss": float(totals["loss"]) / (last - first),
                                "train_acc": float(totals["acc"]) / (last - first),
                                "test_loss": test["loss"],
                                "test_acc": test["accuracy"],
                            }
                        )
                        bar.update(last - first)
                # The probes' running maxima, over every unit of each kernel.
                run["fan_in_ratio"] = {
                    q: {k: float(np.max(v)) for k, v in opt_state[i].items()}
                    for q, i in PROBES[cfg["model"]].items()
                }
                run["fan_in_sum_change"] = diagnostics.kernel_changes(
                    start_params, params, kernels
                )["fan_in_sum"]
                runs.append(run)
    bar.close()

    summary = summarize(runs, cfg)
    for comp in comparisons(cfg):
        s = summary[comp.name]
        mine = [r for r in runs if r["optimizer"] == comp.optimizer]
        targeted = list(diagnostics.gc_axes(params0, conv_only=comp.conv_only))
        s["gc_active"] = gc_active_check(mine, list(kernels), targeted, comp)
        s["recipe_check"] = recipes[comp.name]
        if cfg["model"] == "resnet":
            s["baseline_check"] = recipes["baseline"]
    res: dict[str, Any] = {
        "command": command(config, workdir),
        "config": cfg,
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
        "model": {
            "spec": list(spec),
            "params": int(sum(np.size(p) for p in jax.tree.leaves(params0))),
            "batch_stats": int(sum(np.size(p) for p in jax.tree.leaves(rngs0)))
            if cfg["model"] == "resnet"
            else 0,
        },
        "kernels": list(kernels),
        "eval_compile_time_s": eval_compile,
        "runs": runs,
        "summary": summary,
    }
    text = report.report(res, markdown=False)
    print(text)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    res["total_time_s"] = time.perf_counter() - start
    (out / "summary.md").write_text(report.report(res, markdown=True) + "\n")
    report.write_csv(res, out / "results.csv")
    report.plot_curves(res, out / "curves.png")
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    print(
        f"\nWrote {out}/results.json, results.csv, curves.png and summary.md. "
        f"Total {res['total_time_s']:.0f} s."
    )
    return res | {"text": text}
