"""Data-parallel + FSDP training of the example CNN with Gradient Centralization.

The batch is split over every device of a ``(data, fsdp)`` mesh, and each
large kernel, with its optimizer state, is stored sharded over ``"fsdp"``
along its largest divisible axis. The whole train step (forward, backward,
``optax_gc.centralize()`` and the optimizer) is one ``jax.jit`` with explicit
in/out shardings; XLA's SPMD partitioner inserts the collectives. GC needs
nothing sharding-specific: it is a pure function of the gradients, and for a
kernel sharded along a fan-in axis XLA reduces each block in place and
all-reduces only the per-output means (``collectives.py`` reads that from
the compiled HLO).

Trained again from the same seed on one device with no mesh, the params agree
to float32 rounding until the reordered sums drift apart as any two float32
runs do (README.md); ``train_and_evaluate`` measures it after every epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import optax_gc
from examples import datasets
from examples.common import cnn, diagnostics, evaluate, optim
from examples.nnx_cnn.models import CNN
from examples.sharded import checkpoint

AXES = ("data", "fsdp")
RECIPES = tuple(
    n for n in optax_gc.__all__ if n not in ("centralize", "default_reduction_axes")
)
CHECKPOINTS = "checkpoints"

# ------------------------------------------------------------- sharding


def make_mesh(mesh_shape: tuple[int, int]) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``data * fsdp`` devices.

    The axes are ``Auto``: XLA propagates the input shardings through the
    model, so the model code carries no sharding annotations.

    Args:
      mesh_shape: ``(data, fsdp)`` sizes.

    Returns:
      The mesh.

    Raises:
      ValueError: if the process has fewer devices than the mesh needs.
    """
    n = math.prod(mesh_shape)
    if jax.device_count() < n:
        raise ValueError(
            f"mesh_shape {tuple(mesh_shape)} needs {n} devices, this process has "
            f"{jax.device_count()}. On CPU set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={n} before jax is imported "
            "(main.py does), or pass a smaller --config.mesh_shape."
        )
    return jax.make_mesh(
        tuple(mesh_shape),
        AXES,
        axis_types=(AxisType.Auto,) * len(AXES),
        devices=jax.devices()[:n],
    )


def fsdp_spec(shape: tuple[int, ...], *, fsdp_size: int, min_size: int) -> P:
    """Shards a leaf over ``"fsdp"`` along its largest axis divisible by it.

    Leaves of fewer than ``min_size`` elements, and those with no divisible
    axis, are replicated. On a tie the later axis wins: for a Flax kernel
    that is the output axis, which GC centralizes with no communication.

    Args:
      shape: the leaf's shape.
      fsdp_size: the size of the mesh's ``"fsdp"`` axis.
      min_size: leaves with fewer elements are replicated.

    Returns:
      The leaf's ``PartitionSpec``.

    Example:
      >>> fsdp_spec((512, 10), fsdp_size=2, min_size=1024)  # Dense 512 -> 10
      P('fsdp', None)
      >>> fsdp_spec((3, 3, 32, 64), fsdp_size=2, min_size=1024)
      P(None, None, None, 'fsdp')
      >>> fsdp_spec((512,), fsdp_size=2, min_size=1024)  # a bias: small
      P()
    """
    if math.prod(shape) < min_size:
        return P()
    divisible = [a for a, d in enumerate(shape) if d % fsdp_size == 0]
    if not divisible:
        return P()
    axis = max(divisible, key=lambda a: (shape[a], a))
    return P(*("fsdp" if a == axis else None for a in range(len(shape))))


def param_specs(params: Any, *, fsdp_size: int, min_size: int) -> Any:
    """A ``PartitionSpec`` for every leaf of ``params`` (see ``fsdp_spec``)."""
    return jax.tree.map(
        lambda x: fsdp_spec(x.shape, fsdp_size=fsdp_size, min_size=min_size), params
    )


def named_specs(specs: Any) -> dict[str, P]:
    """``{"dense2/kernel": PartitionSpec(...), ...}`` from a tree of specs."""
    flat = jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda s: isinstance(s, P)
    )
    return {diagnostics.leaf_name(path): spec for path, spec in flat}


def local_rows(sharding: NamedSharding, n: int) -> slice:
    """The rows of an ``n``-row global batch that this process's devices hold.

    Raises:
      ValueError: if they are not one contiguous block (a device order that
        interleaves the processes along the batch axis).
    """
    rows = sorted(
        i[0].indices(n) for i in sharding.addressable_devices_indices_map((n,)).values()
    )
    start, stop = rows[0][0], max(r[1] for r in rows)
    covered = {j for r in rows for j in range(*r)}
    if covered != set(range(start, stop)):
        raise ValueError(
            f"this process's devices hold rows {rows} of the batch, not one block; "
            "order the mesh's devices by process (jax.make_mesh does)."
        )
    return slice(start, stop)


def shard_batch(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global batch, held whole by every process, as one sharded array.

    Each process hands over only the rows its own devices hold, as
    ``jax.make_array_from_process_local_data`` expects.
    """
    return jax.make_array_from_process_local_data(
        sharding, x[local_rows(sharding, len(x))], x.shape
    )


def load_rows(array: np.ndarray, idx: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The global batch ``array[idx]``, of which this process reads only its rows.

    Every process computes the same global order ``idx`` (the same seed) and
    gathers only the rows its devices hold: with several processes, each one
    feeds its own shard of the global batch.
    """
    local = array[idx[local_rows(sharding, len(idx))]]
    return jax.make_array_from_process_local_data(
        sharding, local, (len(idx), *array.shape[1:])
    )


# ------------------------------------------------------------ the model


class Model(NamedTuple):
    """The CNN as pytrees a ``jax.jit`` can take.

    Attributes:
      graphdef: the static structure (``nnx.split``).
      params: the ``nnx.Param`` leaves (arrays or ``jax.ShapeDtypeStruct``).
      rest: everything else: the dropout RNG key and counter.
    """

    graphdef: nnx.GraphDef
    params: nnx.State
    rest: nnx.State


def _cnn(
    config: ml_collections.ConfigDict, input_shape: tuple[int, ...], classes: int
) -> CNN:
    return CNN(
        tuple(input_shape),
        classes,
        dropout_rate=config.dropout_rate,
        rngs=nnx.Rngs(config.seed),
    )


def abstract_model(
    config: ml_collections.ConfigDict, input_shape: tuple[int, ...], classes: int
) -> Model:
    """The example CNN's structure and shapes; no array is allocated."""
    abstract = nnx.eval_shape(lambda: _cnn(config, input_shape, classes))
    return Model(*nnx.split(abstract, nnx.Param, ...))


def init_model(
    config: ml_collections.ConfigDict,
    input_shape: tuple[int, ...],
    classes: int,
    *,
    params_sharding: Any,
    rest_sharding: Any,
) -> tuple[nnx.State, nnx.State]:
    """The params and the rest, initialised from ``config.seed`` in place.

    Initialised under ``jax.jit`` straight into their shardings (a sharding
    or a tree of them): no host ever holds the whole model, which is what
    several hosts need, and the values are the same on any mesh.
    """

    def init() -> tuple[nnx.State, nnx.State]:
        _, params, rest = nnx.split(_cnn(config, input_shape, classes), nnx.Param, ...)
        return params, rest

    return jax.jit(init, out_shardings=(params_sharding, rest_sharding))()


def make_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> Callable[..., Any]:
    """The pure train step.

    Returns:
      ``step(params, opt_state, rest, x, y) -> (params, opt_state, rest,
      loss)``: one optimizer step on the mean cross-entropy, with dropout.
    """

    def train_step(params: Any, opt_state: Any, rest: Any, x: jax.Array, y: jax.Array):
        def loss_fn(model: nnx.Module) -> jax.Array:
            logits = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        model = nnx.merge(graphdef, params, rest)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, nnx.state(model, nnx.Not(nnx.Param)), loss

    return train_step


def make_eval_step(graphdef: nnx.GraphDef) -> Callable[..., Any]:
    """The pure eval step, without dropout.

    Returns:
      ``step(params, rest, x, y, weight) -> (loss sum, hits)`` over the rows
      of weight 1 (0 for padding rows; see ``examples/common/evaluate.py``).
    """

    def eval_step(
        params: Any, rest: Any, x: jax.Array, y: jax.Array, weight: jax.Array
    ):
        model = nnx.view(nnx.merge(graphdef, params, rest), deterministic=True)
        return evaluate.weighted_sums(model(x), y, weight)

    return eval_step


class Shardings(NamedTuple):
    """Where every input of the train step lives on the mesh."""

    params: Any
    opt_state: Any
    rest: Any
    batch: NamedSharding
    replicated: NamedSharding


def make_shardings(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    model: Model,
    tx: optax.GradientTransformation,
) -> Shardings:
    """FSDP params, optimizer state like the params, batch over all devices.

    Args:
      config: ``min_shard_size``.
      mesh: a ``(data, fsdp)`` mesh.
      model: the split model.
      tx: the optimizer whose state is laid out.

    Returns:
      The shardings; counters, empty states and the RNG state are replicated.
    """
    specs = param_specs(
        model.params, fsdp_size=mesh.shape["fsdp"], min_size=config.min_shard_size
    )
    params = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    replicated = NamedSharding(mesh, P())
    # Each params-shaped part of the state (SGD momentum, Adam's moments) gets
    # the params' shardings.
    opt_state = optax.tree_map_params(
        tx,
        lambda _, sharding: sharding,
        jax.eval_shape(tx.init, model.params),
        params,
        transform_non_params=lambda _: replicated,
    )
    return Shardings(
        params=params,
        opt_state=opt_state,
        rest=jax.tree.map(lambda _: replicated, model.rest),
        batch=NamedSharding(mesh, P(AXES)),
        replicated=replicated,
    )


def jit_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    shardings: Shardings | None,
) -> Any:
    """The jitted train step, with explicit in/out shardings on a mesh.

    With ``shardings=None`` it is a plain ``jax.jit`` for one device. Params
    and optimizer state are donated: updated in place.
    """
    step = make_train_step(graphdef, tx)
    if shardings is None:
        return jax.jit(step, donate_argnums=(0, 1))
    s = shardings
    return jax.jit(
        step,
        in_shardings=(s.params, s.opt_state, s.rest, s.batch, s.batch),
        out_shardings=(s.params, s.opt_state, s.rest, s.replicated),
        donate_argnums=(0, 1),
    )


# ------------------------------------------------------------- training


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The configured optimizer, wrapped in ``optax.MultiSteps`` if asked.

    Args:
      config: ``recipe`` (the name of an ``optax_gc`` recipe, e.g.
        ``"adamw"``, built as ``optax_gc.<recipe>(learning_rate)``; empty:
        ``examples/common/optim.py``'s ``optimizer``, ``gc``, ...) and
        ``accumulate_steps`` (above 1: that many batches per update).

    Returns:
      The transformation.

    Raises:
      ValueError: for an unknown ``recipe`` or ``accumulate_steps`` below 1.

    Example:
      >>> config = ml_collections.ConfigDict(dict(
      ...     recipe="adamw", learning_rate=1e-3, accumulate_steps=4))
      >>> type(make_optimizer(config)).__name__
      'MultiSteps'
    """
    if config.recipe:
        if config.recipe not in RECIPES:
            raise ValueError(
                f"config.recipe is {config.recipe!r}: not an optax_gc recipe; use "
                f"one of {', '.join(RECIPES)}, or '' for config.optimizer."
            )
        tx = getattr(optax_gc, config.recipe)(config.learning_rate)
    else:
        tx = optim.create_optimizer(config)
    if config.accumulate_steps < 1:
        raise ValueError(
            f"config.accumulate_steps is {config.accumulate_steps}; it must be >= 1."
        )
    if config.accumulate_steps == 1:
        return tx
    return optax.MultiSteps(tx, every_k_schedule=config.accumulate_steps)


def _epoch_orders(n: int, rng: np.random.Generator, *, skip: int) -> Iterator:
    """A seeded permutation of ``n`` rows per epoch, after ``skip`` epochs.

    The skipped epochs' permutations are drawn and dropped, so a resumed run
    sees the batches an uninterrupted one would.
    """
    for _ in range(skip):
        rng.permutation(n)
    while True:
        yield rng.permutation(n)


def to_host(tree: Any) -> Any:
    """NumPy copies of a tree's arrays, whole even where other hosts hold shards."""

    def one(x: Any) -> np.ndarray:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(x)

    return jax.tree.map(one, tree)


def _abstract(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves with the shardings given."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        tree,
        shardings,
    )


def train(
    config: ml_collections.ConfigDict,
    data: datasets.Dataset,
    mesh: Mesh | None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    keep_epoch_params: bool = False,
) -> dict[str, Any]:
    """Trains from ``config.seed`` on ``mesh`` (``None``: one device, no mesh).

    The same seed gives the same initialisation, dropout masks (jax's
    threefry RNG gives the same bits however an array is sharded) and batch
    order on any mesh and any number of processes.

    With ``checkpoint_dir`` and ``config.checkpoint_every`` above 0 the train
    state (params, optimizer state, dropout RNG) and the position in the data
    are saved every ``checkpoint_every`` steps and at the end, the newest
    ``checkpoint_keep`` kept (``checkpoint.py``), and training resumes from
    the newest sound checkpoint there, on this mesh, however many processes
    wrote it: an interrupted run that resumes ends with the params of one
    that never stopped.

    Args:
      config: see ``configs/default.py``.
      data: the data set.
      mesh: a ``(data, fsdp)`` mesh, or ``None``.
      checkpoint_dir: where checkpoints go, or ``None`` for none.
      keep_epoch_params: also return the params after every epoch trained in
        this call.

    Returns:
      A dict: ``params0`` and ``params`` (initial and final, host NumPy),
      ``epoch_params`` (if kept), ``step_losses``, ``history`` (per epoch),
      ``initial_train_loss``, ``train_loss``, ``train_accuracy``,
      ``test_loss``, ``test_accuracy``, ``seconds`` (the training loop of
      this call, compilation included), ``devices``, ``processes``,
      ``resumed_from`` (the step restored, or 0) and
      ``skipped_checkpoints`` (``[step, reason]`` of each unusable one).
    """
    x_train, y_train = data.train_images, data.train_labels
    if len(y_train) < config.batch_size:
        raise ValueError(
            f"config.batch_size={config.batch_size} is larger than the "
            f"{len(y_train)} training images; lower it or raise train_limit."
        )
    n_dev = 1 if mesh is None else mesh.size
    if config.batch_size % n_dev:
        raise ValueError(
            f"config.batch_size={config.batch_size} must be a multiple of the "
            f"{n_dev} mesh devices it is split over."
        )
    input_shape = x_train.shape[1:]
    model = abstract_model(config, input_shape, data.num_classes)
    tx = make_optimizer(config)
    shardings = None if mesh is None else make_shardings(config, mesh, model, tx)
    train_step = jit_train_step(model.graphdef, tx, shardings)
    eval_step = jax.jit(make_eval_step(model.graphdef))

    put_batch: Callable[[np.ndarray], jax.Array]
    load_batch: Callable[[np.ndarray, np.ndarray], jax.Array]
    if shardings is None:
        device = jax.local_devices()[0]
        params_at = rest_at = opt_state_at = SingleDeviceSharding(device)
        replicated = None

        def put_batch(x: np.ndarray) -> jax.Array:
            return jax.device_put(x, device)

        def load_batch(array: np.ndarray, idx: np.ndarray) -> jax.Array:
            return jax.device_put(array[idx], device)
    else:
        params_at, rest_at = shardings.params, shardings.rest
        opt_state_at = shardings.opt_state
        replicated = shardings.replicated

        def put_batch(x: np.ndarray) -> jax.Array:
            return shard_batch(x, shardings.batch)

        def load_batch(array: np.ndarray, idx: np.ndarray) -> jax.Array:
            return load_rows(array, idx, shardings.batch)

    params, rest = init_model(
        config,
        input_shape,
        data.num_classes,
        params_sharding=params_at,
        rest_sharding=rest_at,
    )
    # out_shardings: a jitted init that only makes zeros would otherwise put
    # them on one device.
    opt_state = jax.jit(tx.init, out_shardings=opt_state_at)(params)

    def held_out(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        # Batches of a multiple of n_dev rows, so that they split evenly.
        batches = evaluate.padded_batches(x, y, config.eval_batch_size, multiple=n_dev)
        res = evaluate.evaluate(
            lambda *batch: eval_step(params, rest, *map(put_batch, batch)), batches
        )
        return res["loss"], res["accuracy"]

    params0 = to_host(params)
    steps_per_epoch = len(y_train) // config.batch_size  # ragged batch dropped
    last = steps_per_epoch * config.num_epochs
    step, losses, history = 0, [], []
    meta: dict[str, Any] = {}
    skipped: list[list[Any]] = []
    ckpt = None
    # 0: no checkpoints; a negative count is refused by Checkpoints.
    if checkpoint_dir is not None and config.checkpoint_every != 0:
        ckpt = checkpoint.Checkpoints(
            checkpoint_dir,
            every=config.checkpoint_every,
            keep=config.checkpoint_keep,
            replicated=replicated,
        )
        target = _abstract(
            {"params": params, "opt_state": opt_state, "rest": rest},
            {"params": params_at, "opt_state": opt_state_at, "rest": rest_at},
        )
        found = ckpt.restore(target)
        if found is not None:
            meta = found.meta
            skipped = [list(s) for s in found.skipped]
            if (
                meta["steps_per_epoch"] != steps_per_epoch
                or meta["seed"] != config.seed
            ):
                raise ValueError(
                    f"the checkpoint in {checkpoint_dir} is of another run "
                    f"(seed {meta['seed']}, {meta['steps_per_epoch']} steps per "
                    f"epoch; this one: seed {config.seed}, {steps_per_epoch}); use "
                    "another --workdir."
                )
            step, losses, history = found.step, meta["step_losses"], meta["history"]
            params, rest = found.state["params"], found.state["rest"]
            opt_state = found.state["opt_state"]
    initial_train_loss = meta.get("initial_train_loss")
    if initial_train_loss is None:
        initial_train_loss, _ = held_out(x_train, y_train)
    resumed_from = step
    orders = _epoch_orders(
        len(y_train), np.random.default_rng(config.seed), skip=step // steps_per_epoch
    )
    epoch_params: list[Any] = []
    pending: list[jax.Array] = []  # losses not yet copied to the host
    start = time.perf_counter()
    while step < last:
        perm = next(orders)
        for i in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[i * config.batch_size : (i + 1) * config.batch_size]
            x, y = load_batch(x_train, idx), load_batch(y_train, idx)
            params, opt_state, rest, loss = train_step(params, opt_state, rest, x, y)
            pending.append(loss)
            step += 1
            end_of_epoch = step % steps_per_epoch == 0
            save = ckpt is not None and ckpt.due(step, last=last)
            if end_of_epoch or save:
                losses += [float(v) for v in pending]
                pending = []
            if end_of_epoch:
                test_loss, test_acc = held_out(data.test_images, data.test_labels)
                history.append(
                    {
                        "epoch": step // steps_per_epoch,
                        "train_loss": float(np.mean(losses[-steps_per_epoch:])),
                        "test_loss": test_loss,
                        "test_accuracy": test_acc,
                    }
                )
                if keep_epoch_params:
                    epoch_params.append(to_host(params))
            if save:
                state = {"params": params, "opt_state": opt_state, "rest": rest}
                ckpt.save(
                    step,
                    state,
                    {
                        "step": step,
                        "epoch": step // steps_per_epoch,
                        "batch_in_epoch": step % steps_per_epoch,
                        "steps_per_epoch": steps_per_epoch,
                        "seed": config.seed,
                        "initial_train_loss": initial_train_loss,
                        "step_losses": losses,
                        "history": history,
                        "processes": jax.process_count(),
                        "mesh": None if mesh is None else dict(mesh.shape),
                    },
                )
    seconds = time.perf_counter() - start
    if ckpt is not None:
        ckpt.close()
    train_loss, train_acc = held_out(x_train, y_train)
    test_loss, test_acc = held_out(data.test_images, data.test_labels)
    return {
        "params0": params0,
        "params": to_host(params),
        "epoch_params": epoch_params,
        "step_losses": losses,
        "history": history,
        "initial_train_loss": initial_train_loss,
        "train_loss": train_loss,
        "train_accuracy": train_acc,
        "test_loss": test_loss,
        "test_accuracy": test_acc,
        "seconds": seconds,
        "devices": n_dev,
        "processes": jax.process_count(),
        "resumed_from": resumed_from,
        "skipped_checkpoints": skipped,
    }


def max_difference(a: Any, b: Any) -> dict[str, float]:
    """The largest absolute and relative difference between two trees.

    Relative: a leaf's largest absolute difference over its largest
    ``|value|`` in ``b``, maximised over leaves.
    """
    abs_diff, rel_diff = 0.0, 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        d = float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max())
        abs_diff = max(abs_diff, d)
        rel_diff = max(rel_diff, d / max(float(np.abs(y).max()), 1e-30))
    return {"max_abs": abs_diff, "max_rel": rel_diff}


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> dict[str, Any]:
    """Trains on the ``config.mesh_shape`` mesh and evaluates on the test set.

    With ``config.compare_single_device`` it trains again from the same seed
    on one device with no mesh and compares the params after every epoch.
    With ``config.checkpoint_every`` above 0 the mesh run saves checkpoints
    to ``<workdir>/checkpoints`` and resumes from the newest sound one there.

    Args:
      config: see ``configs/default.py``.
      workdir: directory for ``metrics.json`` and ``params.npz`` (the final
        params by leaf name), written by process 0 only, and for the
        checkpoints (created if missing).

    Returns:
      What it writes to ``metrics.json``: the mesh, each param's
      ``PartitionSpec``, final losses and accuracies, the per-epoch history,
      per-step losses, each kernel's ``weight_change`` and
      ``fan_in_sum_change`` (see ``examples/common/diagnostics.py``), and (if compared)
      ``single_device``: its test accuracy, the largest difference of the
      step losses and, per epoch, of the params (``max_abs``, ``max_rel``).
    """
    data = cnn.load_data(config)
    mesh = make_mesh(tuple(config.mesh_shape))
    compare = config.compare_single_device
    sharded = train(
        config,
        data,
        mesh,
        checkpoint_dir=os.path.join(workdir, CHECKPOINTS),
        keep_epoch_params=compare,
    )
    metrics: dict[str, Any] = {
        k: v
        for k, v in sharded.items()
        if k not in ("params0", "params", "epoch_params")
    }
    metrics["config"] = config.to_dict()
    metrics["mesh"] = dict(mesh.shape)
    metrics["data_source"] = data.source
    specs = param_specs(
        sharded["params0"], fsdp_size=mesh.shape["fsdp"], min_size=config.min_shard_size
    )
    metrics["param_specs"] = {k: list(v) for k, v in named_specs(specs).items()}
    kernels = diagnostics.gc_axes(sharded["params0"])
    changes = diagnostics.kernel_changes(sharded["params0"], sharded["params"], kernels)
    metrics["weight_change"] = changes["weight"]
    metrics["fan_in_sum_change"] = changes["fan_in_sum"]
    if compare and sharded["resumed_from"]:
        # The epochs before the restart were not kept: nothing to compare.
        compare = False
    if compare:
        single = train(config, data, None, keep_epoch_params=True)
        loss_diff = np.subtract(sharded["step_losses"], single["step_losses"])
        metrics["single_device"] = {
            "test_accuracy": single["test_accuracy"],
            "seconds": single["seconds"],
            "max_abs_loss": float(np.abs(loss_diff).max()),
            "per_epoch": [
                {"epoch": i + 1, **max_difference(a, b)}
                for i, (a, b) in enumerate(
                    zip(sharded["epoch_params"], single["epoch_params"], strict=True)
                )
            ],
        }
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        np.savez(os.path.join(workdir, "params.npz"), **flat_params(sharded["params"]))
    return metrics


def flat_params(params: Any) -> dict[str, np.ndarray]:
    """``{"conv1/kernel": array, ...}``: a params tree by leaf name."""
    flat = jax.tree_util.tree_leaves_with_path(params)
    return {diagnostics.leaf_name(path): np.asarray(x) for path, x in flat}
