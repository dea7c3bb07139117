"""Which collectives GC adds to the sharded train step, read from the HLO.

``report`` compiles the sharded train step twice, with and without
``optax_gc.centralize()``, lists every array each compiled program moves
between devices (all-reduce, all-gather, reduce-scatter, all-to-all,
collective-permute) with the mesh axes it moves over, and diffs the two.
GC should add one small all-reduce of the per-output means, ``f32[fan_out]``
over ``fsdp``, for each kernel sharded along a fan-in axis, and nothing for
kernels sharded along their output axis or replicated.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from examples.common import cnn, diagnostics, optim
from examples.sharded import train

OPS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


class Collective(NamedTuple):
    """One array moved by a collective in a compiled HLO module."""

    op: str  # "all-reduce", "all-gather", ...
    array: str  # its HLO type, e.g. "f32[10]"
    axes: str  # the mesh axes it moves over: "fsdp", "data", "data,fsdp"
    bytes: int
    instruction: str  # the HLO instruction: arrays XLA combined share one


_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.*?)\s+"
    r"(?P<op>[a-z][\w\-]*)\("
)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_BITS = re.compile(r"\d+$")
_IOTA = r"\[(?P<{0}>[\d,]+)\](?:<=\[(?P<{0}_src>[\d,]+)\])?(?:T\((?P<{0}_t>[\d,]+)\))?"
# The three ways HLO writes replica groups: an iota tile "[4,2]<=[8]", a
# named mesh "mesh['axis_0'=4,'axis_1'=2] {'axis_1'}" (optionally with
# "device_ids=(<iota tile>)"), and an explicit list "{{0,1},{2,3},...}".
_GROUPS_IOTA = re.compile(r"replica_groups=" + _IOTA.format("g"))
_GROUPS_MESH = re.compile(
    r"replica_groups=mesh\[(?P<mesh>[^\]]*)\]"
    r"(?:, device_ids=\(" + _IOTA.format("d") + r"\))? \{(?P<over>[^}]*)\}"
)
_GROUPS_LIST = re.compile(r"replica_groups=\{\{(?P<first>[\d,]*)\}")


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def _iota(shape: str, src: str | None, perm: str | None) -> np.ndarray:
    """The devices of an HLO iota tile ``[shape]<=[src]T(perm)``, as ``shape``."""
    ids = np.arange(math.prod(_ints(shape))).reshape(_ints(src or shape))
    if perm:
        ids = ids.transpose(_ints(perm))
    return ids.reshape(_ints(shape))


def first_group(line: str) -> list[int] | None:
    """The device ids in a collective's first replica group.

    Args:
      line: one HLO instruction.

    Returns:
      The ids, or ``None`` if the line spells its groups in no known way.

    Example:
      >>> first_group("... replica_groups=[4,2]<=[8], dimensions={0}")
      [0, 1]
      >>> first_group("... replica_groups=[2,4]<=[4,2]T(1,0), to_apply=%add")
      [0, 2, 4, 6]
      >>> first_group("... replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}")
      [0, 2, 4, 6]
      >>> first_group(
      ...     "... replica_groups=mesh['a'=2,'b'=4], device_ids=([4,2]T(1,0)) {'a'}"
      ... )
      [0, 1]
      >>> first_group("... replica_groups={{0,4},{1,5},{2,6},{3,7}}")
      [0, 4]
    """
    if m := _GROUPS_MESH.search(line):
        names = [a.split("=")[0] for a in m["mesh"].split(",")]
        sizes = [int(a.split("=")[1]) for a in m["mesh"].split(",")]
        ids = (
            _iota(m["d"], m["d_src"], m["d_t"])
            if m["d"]
            else np.arange(math.prod(sizes))
        ).reshape(sizes)
        over = set(m["over"].replace(" ", "").split(","))
        first = tuple(slice(None) if n in over else 0 for n in names)
        return ids[first].ravel().tolist()
    if m := _GROUPS_IOTA.search(line):
        return _iota(m["g"], m["g_src"], m["g_t"])[0].tolist()
    if m := _GROUPS_LIST.search(line):
        return _ints(m["first"])
    return None


def mesh_axes(group: list[int] | None, mesh: Mesh) -> str:
    """The mesh axes a replica group spans, e.g. ``"fsdp"`` or ``"data,fsdp"``.

    Device ids in a jitted SPMD program number the mesh's devices in order.
    """
    if group is None:
        return "?"
    coords = np.unravel_index(group, mesh.devices.shape)
    spans = [n for n, c in zip(mesh.axis_names, coords, strict=True) if len(set(c)) > 1]
    return ",".join(spans) or "-"


def parse(hlo: str, mesh: Mesh) -> list[Collective]:
    """Every array moved by a collective in a compiled HLO module.

    XLA may combine several all-reduces into one with a tuple result; each
    array of the tuple is listed, under the same instruction. An async pair
    (``-start``/``-done``) is counted once.

    Args:
      hlo: the text of ``jax.jit(f).lower(...).compile().as_text()``.
      mesh: the mesh it was compiled for.

    Returns:
      The arrays, in program order.
    """
    found = []
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if m is None or m["op"].endswith("-done"):
            continue
        op = m["op"].removesuffix("-start")
        if op not in OPS:
            continue
        axes = mesh_axes(first_group(line), mesh)
        for a in _ARRAY.finditer(m["type"]):
            bits = int(b[0]) if (b := _BITS.search(a["dtype"])) else 8  # pred: 1 B
            found.append(
                Collective(
                    op=op,
                    array=f"{a['dtype']}[{a['dims']}]",
                    axes=axes,
                    bytes=math.prod(_ints(a["dims"])) * bits // 8,
                    instruction=m["name"],
                )
            )
    return found


def compiled_step_hlo(
    config: ml_collections.ConfigDict, input_shape: tuple[int, ...], classes: int
) -> str:
    """The optimized HLO of the sharded train step for ``config``.

    Compiled from abstract inputs (shapes and shardings): nothing is run.
    """
    mesh = train.make_mesh(tuple(config.mesh_shape))
    model = train.abstract_model(config, input_shape, classes)
    tx = optim.create_optimizer(config)
    s = train.make_shardings(config, mesh, model, tx)

    def abstract(tree: Any, shardings: Any) -> Any:
        return jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            tree,
            shardings,
        )

    batch = config.batch_size
    args = (
        abstract(model.params, s.params),
        abstract(jax.eval_shape(tx.init, model.params), s.opt_state),
        abstract(model.rest, s.rest),
        jax.ShapeDtypeStruct((batch, *input_shape), np.float32, sharding=s.batch),
        jax.ShapeDtypeStruct((batch,), np.int32, sharding=s.batch),
    )
    step = train.jit_train_step(model.graphdef, tx, s)
    return step.lower(*args).compile().as_text()


def fan_in_sharded(params: Any, specs: Any, *, conv_only: bool) -> dict[str, int]:
    """The kernels GC centralizes that are sharded along a fan-in axis.

    Flax layout: the fan-in is every axis but the last. For each such kernel
    GC must all-reduce its per-output means, one per output unit.

    Returns:
      ``{name: number of output units}``.
    """
    out = {}
    named = train.named_specs(specs)
    for path, x in jax.tree_util.tree_leaves_with_path(params):
        name = diagnostics.leaf_name(path)
        centralized = x.ndim > 3 if conv_only else x.ndim >= 2
        if centralized and any(a is not None for a in tuple(named[name])[:-1]):
            out[name] = x.shape[-1]
    return out


def _key(c: dict[str, Any]) -> tuple[str, str, str]:
    # Not the instruction name: it changes whenever XLA combines or renumbers.
    return c["op"], c["array"], c["axes"]


def _subtract(rows: list[dict], minus: list[dict]) -> list[dict]:
    """The rows of ``rows`` left after removing one match per row of ``minus``."""
    left = collections.Counter(map(_key, minus))
    out = []
    for c in rows:
        if left[_key(c)] > 0:
            left[_key(c)] -= 1
        else:
            out.append(c)
    return out


def report(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Compiles the sharded step with and without GC and diffs the collectives.

    Args:
      config: the training config (``gc`` is overridden both ways).

    Returns:
      ``mesh``; ``with_gc`` and ``without_gc``: every array each program
      moves (``Collective`` fields as dicts); ``added`` and ``removed``: the
      multiset difference on (op, array, mesh axes); ``expected``: ``{kernel:
      fan_out}`` for each kernel sharded along a fan-in axis, whose
      ``f32[fan_out]`` all-reduce over ``fsdp`` GC should add.
    """
    data = cnn.load_data(config)
    input_shape, classes = data.train_images.shape[1:], data.num_classes
    mesh = train.make_mesh(tuple(config.mesh_shape))
    found = {}
    for gc in (True, False):
        c = config.copy_and_resolve_references()
        c.gc = gc
        hlo = compiled_step_hlo(c, input_shape, classes)
        found[gc] = [x._asdict() for x in parse(hlo, mesh)]
    model = train.abstract_model(config, input_shape, classes)
    specs = train.param_specs(
        model.params, fsdp_size=mesh.shape["fsdp"], min_size=config.min_shard_size
    )
    return {
        "mesh": dict(mesh.shape),
        "with_gc": found[True],
        "without_gc": found[False],
        "added": _subtract(found[True], found[False]),
        "removed": _subtract(found[False], found[True]),
        "expected": fan_in_sharded(model.params, specs, conv_only=config.conv_only),
        "param_specs": {k: list(v) for k, v in train.named_specs(specs).items()},
    }


def table(rep: dict[str, Any]) -> str:
    """The report as plain text.

    Every array the step with GC moves (largest first within each op), those
    GC adds marked, then the totals and the diff.
    """
    added = collections.Counter(map(_key, rep["added"]))
    lines = [
        f"Collectives of the sharded train step with GC, mesh {rep['mesh']}.",
        "Arrays that share an HLO instruction were combined into one op by XLA.",
        "",
        f"{'op':<12}{'array':<18}{'over':<11}{'bytes':>8}  {'HLO instruction':<20}"
        "GC adds",
    ]
    for c in sorted(rep["with_gc"], key=lambda c: (c["op"], -c["bytes"])):
        mark = added[_key(c)] > 0
        added[_key(c)] -= mark
        lines.append(
            f"{c['op']:<12}{c['array']:<18}{c['axes']:<11}{c['bytes']:>8}  "
            f"{c['instruction']:<20}{'<- yes' if mark else ''}"
        )

    def total(rows: list[dict[str, Any]]) -> str:
        return f"{len(rows)} arrays, {sum(c['bytes'] for c in rows)} bytes"

    def listing(rows: list[dict[str, Any]]) -> str:
        return ", ".join(f"{c['op']} {c['array']} over {c['axes']}" for c in rows)

    expected = (
        ", ".join(
            f"all-reduce f32[{n}] over fsdp ({k})" for k, n in rep["expected"].items()
        )
        or "nothing (no kernel GC centralizes is sharded along a fan-in axis)"
    )
    lines += [
        "",
        f"with GC:    {total(rep['with_gc'])}",
        f"without GC: {total(rep['without_gc'])}",
        f"GC adds:    {listing(rep['added']) or 'nothing'}",
        f"GC removes: {listing(rep['removed']) or 'nothing'}",
        f"expected:   {expected}",
    ]
    return "\n".join(lines)
