"""Where GC's time goes inside a compiled step: HLO and profiler analysis.

Two programs are compared, the bare step and the step with GC. Their
optimised HLO (``compiled.as_text()``) gives the instructions GC adds: the
entry instructions whose signature (what they are, their result and operand
shapes) the bare program does not have. On XLA:CPU each entry instruction
runs as one thunk, in the order of the entry computation (its schedule), and
``jax.profiler`` records every thunk under the instruction's name, so a
trace of a few steps gives each added instruction's own time inside the
step, and which thread ran it.
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

# "  name = f32[3,3,64,64]{3,2,1,0} opcode(a, b), kind=..., calls=..."
_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(.*)$")
_SHAPE = re.compile(r"(\w+\[[\d,]*\])")


def entry_instructions(hlo: str) -> list[dict[str, Any]]:
    """The entry computation's instructions in schedule order.

    Each is ``{"name", "opcode", "shape", "operands", "kind", "calls"}``;
    ``shape`` keeps dtype and dimensions, not the layout.
    """
    lines = hlo.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ENTRY"))
    out = []
    for line in lines[start + 1 :]:
        if line.startswith("}"):
            break
        m = _INSTR.match(line)
        if m is None:
            continue
        name, shape, opcode, operands, rest = m.groups()
        kind = re.search(r"kind=(\w+)", rest)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        out.append(
            {
                "name": name,
                "opcode": opcode,
                "shape": " ".join(_SHAPE.findall(shape)),
                "operands": [o.strip().lstrip("%") for o in operands.split(",")],
                "kind": kind.group(1) if kind else "",
                "calls": calls.group(1) if calls else "",
            }
        )
    return out


def _computations(hlo: str) -> dict[str, str]:
    """The body text of every computation, by name."""
    bodies: dict[str, str] = {}
    name = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            name = head.group(1)
            bodies[name] = ""
        elif name is not None:
            bodies[name] += line + "\n"
    return bodies


def _signature(ins: dict[str, Any], shapes: dict[str, str], bodies: Any) -> str:
    body = bodies.get(ins["calls"], "")
    ops = sorted(set(re.findall(r"= \S+ ([\w\-]+)\(", body)))
    operand_shapes = ",".join(shapes.get(o, "?") for o in ins["operands"])
    return f"{ins['opcode']}:{ins['kind']}:{ins['shape']}<-{operand_shapes}:{ops}"


def _reduces(ins: dict[str, Any], bodies: dict[str, str]) -> bool:
    """A reduce, or a product (how the ``gemv`` kernel sums)."""
    body = bodies.get(ins["calls"], "")
    return ins["opcode"] in ("reduce", "dot") or " reduce(" in body or " dot(" in body


def _copies(ins: dict[str, Any], bodies: dict[str, str]) -> bool:
    """Whether the instruction only moves data (copies or transposes)."""
    if ins["opcode"] in ("copy", "transpose"):
        return True
    ops = set(re.findall(r"= \S+ ([\w\-]+)\(", bodies.get(ins["calls"], "")))
    moves = {"parameter", "copy", "transpose", "bitcast", "reshape"}
    return (
        ins["opcode"] == "fusion"
        and bool(ops)
        and ops <= moves
        and ("copy" in ops or "transpose" in ops)
    )


_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1}


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape such as ``f32[768,12,64]`` (tuples: summed)."""
    total = 0
    for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", shape):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES.get(dtype, 4)
    return total


def added_instructions(bare_hlo: str, gc_hlo: str) -> dict[str, Any]:
    """What the GC program has that the bare one has not.

    Returns:
      ``added``: names of the GC program's entry instructions with no
      counterpart in the bare program (same opcode, fusion kind, result and
      operand shapes, ops inside); ``added_reduces``: those that reduce
      (or multiply: a product with ones sums too);
      ``removed``: the bare program's instructions with no counterpart in
      the GC program (the optimizer loops GC's subtraction was fused into);
      ``added_copies``: added instructions that only copy or transpose
      (a layout change XLA inserted), with their ``copy_bytes``;
      ``counts``: entry instructions and fusions of each program;
      ``distance``: for each added reduce, how many thunks after the last
      producer of its operands it is scheduled (1: right after).
    """
    progs = {}
    for key, hlo in (("bare", bare_hlo), ("gc", gc_hlo)):
        ins = entry_instructions(hlo)
        shapes = {i["name"]: i["shape"] for i in ins}
        bodies = _computations(hlo)
        sigs = [_signature(i, shapes, bodies) for i in ins]
        progs[key] = (ins, sigs, bodies)
    remaining = collections.Counter(progs["bare"][1])
    ins, sigs, bodies = progs["gc"]
    added = []
    for i, sig in zip(ins, sigs, strict=True):
        if remaining[sig] > 0:
            remaining[sig] -= 1
        elif i["opcode"] not in ("parameter", "tuple", "get-tuple-element"):
            added.append(i["name"])
    position = {i["name"]: k for k, i in enumerate(ins)}
    reduces = [n for n in added if _reduces(ins[position[n]], bodies)]
    copies = [n for n in added if _copies(ins[position[n]], bodies)]
    distance = []
    for n in reduces:
        producers = [position[o] for o in ins[position[n]]["operands"] if o in position]
        if producers:
            distance.append(position[n] - max(producers))
    removed = []
    rest = collections.Counter(sigs)
    bare_ins, bare_sigs, _ = progs["bare"]
    for i, sig in zip(bare_ins, bare_sigs, strict=True):
        if rest[sig] > 0:
            rest[sig] -= 1
        elif i["opcode"] not in ("parameter", "tuple", "get-tuple-element"):
            removed.append(i["name"])
    return {
        "added": added,
        "added_reduces": reduces,
        "removed": removed,
        "added_copies": copies,
        "copy_bytes": sum(shape_bytes(ins[position[n]]["shape"]) for n in copies),
        "counts": {
            key: {
                "instructions": len(p[0]),
                "fusions": sum(i["opcode"] == "fusion" for i in p[0]),
            }
            for key, p in progs.items()
        },
        "distance": distance,
    }


def trace_events(run: Callable[[], Any], *, steps: int) -> list[dict[str, Any]]:
    """Complete ("X") events of ``steps`` calls of ``run`` under the profiler."""
    jax.block_until_ready(run())
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        try:
            for _ in range(steps):
                jax.block_until_ready(run())
        finally:
            jax.profiler.stop_trace()
        (path,) = Path(tmp).glob("**/*.trace.json.gz")
        data = json.loads(gzip.decompress(path.read_bytes()))
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def thunk_times(
    events: list[dict[str, Any]], *, thunks: set[str], names: set[str]
) -> dict[str, Any]:
    """Per-step time of the thunks ``names`` and of the whole step.

    A step runs from the start of an ``ExecuteHelperOnSingleDevice`` event
    to the end of the last thunk after it; ``thunks`` are the program's
    entry instruction names (its thunks' event names), ``names`` a subset.

    Returns:
      ``step_ms``: median step span; ``thunk_ms``: median per-step sum of
      all thunks' durations (over all threads); ``named_ms``: the same for
      ``names`` alone; ``named_share``: median per-step ``named / span``;
      ``named_threads``: the threads that ran ``names``; ``overlap``: the
      share of ``names``' time during which a thunk ran on another thread;
      ``top``: the slowest of ``names`` (median ms each).
    """
    starts = sorted(
        e["ts"] for e in events if e["name"].endswith("ExecuteHelperOnSingleDevice")
    )
    per_step: list[dict[str, float]] = [
        {"span_end": s, "all": 0.0, "named": 0.0} for s in starts
    ]
    each: dict[str, list[float]] = collections.defaultdict(list)
    threads: set[Any] = set()
    # "end: name" markers are not thunks (they may carry the hlo_op too).
    events = [e | {"name": _op(e)} for e in events if not e["name"].startswith("end: ")]
    for e in events:
        if not starts or e["ts"] < starts[0]:
            continue
        k = max(i for i, s in enumerate(starts) if s <= e["ts"])
        step = per_step[k]
        if e["name"] in names:
            step["named"] += e["dur"]
            each[e["name"]].append(e["dur"])
            threads.add(e.get("tid"))
        if e["name"] in thunks:
            step["all"] += e["dur"]
            step["span_end"] = max(step["span_end"], e["ts"] + e["dur"])
    spans = [p["span_end"] - s for p, s in zip(per_step, starts, strict=True)]
    named_events = [e for e in events if e["name"] in names]
    other = [e for e in events if e["name"] in thunks and e["name"] not in names]
    top = sorted(each.items(), key=lambda kv: -statistics.median(kv[1]))[:5]
    return {
        "steps": len(starts),
        "step_ms": statistics.median(spans) / 1e3,
        "thunk_ms": statistics.median(p["all"] for p in per_step) / 1e3,
        "named_ms": statistics.median(p["named"] for p in per_step) / 1e3,
        "named_share": statistics.median(
            p["named"] / s for p, s in zip(per_step, spans, strict=True)
        ),
        "named_threads": len(threads),
        "overlap": _overlap(named_events, other),
        "top": {n: statistics.median(d) / 1e3 for n, d in top},
    }


def _op(event: dict[str, Any]) -> str:
    """The HLO instruction an event ran (XLA:CPU: also the event's name)."""
    return str(event.get("args", {}).get("hlo_op", event["name"]))


def _overlap(named: list[dict[str, Any]], other: list[dict[str, Any]]) -> float:
    """Share of ``named``'s time during which ``other`` run on another thread."""
    total = sum(e["dur"] for e in named)
    if not total:
        return 0.0
    other = sorted(other, key=lambda e: e["ts"])
    covered = 0.0
    for e in named:
        lo, hi = e["ts"], e["ts"] + e["dur"]
        spans = sorted(
            (max(lo, o["ts"]), min(hi, o["ts"] + o["dur"]))
            for o in other
            if o["tid"] != e["tid"] and o["ts"] < hi and o["ts"] + o["dur"] > lo
        )
        end = lo
        for a, b in spans:
            covered += max(0.0, b - max(a, end))
            end = max(end, b)
    return covered / total
