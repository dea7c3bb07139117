"""Checkpoints that resume: Orbax, atomic, the last K kept, corruption detected.

A checkpoint is one Orbax step directory holding the train state (params,
optimizer state, the dropout RNG: any pytree of global ``jax.Array``) and a
JSON record of where training stands (the step, which fixes the data
position; the losses and history so far) together with a fingerprint of the
state. Orbax writes each step to a temporary directory and renames it when
every process has finished, so a run killed mid-save leaves the previous
checkpoints as they were and no half-written one that looks complete.

Once a step is in place, process 0 records the size of each of its files
(``manifests/<step>.json``). Restoring reads the newest checkpoint into the
shardings the caller gives, which may belong to another mesh or another
number of processes than the run that saved it. A checkpoint whose files
differ from their manifest (a truncated file: every process sees it before
reading), that fails to read, or whose state does not match its
fingerprint (stale or altered data) is reported, moved aside (never
deleted) and the one before it is tried.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CORRUPT_DIR = "corrupt"
MANIFESTS_DIR = "manifests"


class Restored(NamedTuple):
    """A checkpoint read back.

    Attributes:
      step: its step.
      state: the train state, in the shardings asked for.
      meta: the JSON record saved with it (without the fingerprint).
      skipped: ``(step, reason)`` of each newer checkpoint found unusable.
    """

    step: int
    state: Any
    meta: dict[str, Any]
    skipped: list[tuple[int, str]]


def _bits(x: jax.Array) -> jax.Array:
    """A leaf's bit patterns as a flat ``uint32`` vector."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32).ravel()
    unsigned = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32).ravel()


def _leaf_print(x: jax.Array) -> jax.Array:
    # Wrapping integer sums: exact, so the same on any sharding and in any
    # reduction order; the weighted one also sees values that changed place.
    bits = _bits(x)
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.stack(
        [bits.sum(dtype=jnp.uint32), (bits * weights).sum(dtype=jnp.uint32)]
    )


def fingerprint(state: Any, *, replicated: jax.sharding.Sharding | None) -> list[int]:
    """Two exact integer checksums per leaf of ``state``, on the devices.

    Computed from the leaves' bit patterns with wrapping ``uint32`` sums, so
    the result does not depend on how the leaves are sharded: a state saved
    from one mesh and restored into another has the same fingerprint.

    Args:
      state: a pytree of arrays (PRNG keys included).
      replicated: where the checksums are gathered (a replicated sharding of
        the mesh), or ``None`` off a mesh.

    Returns:
      ``2 * len(leaves)`` integers.

    Example:
      >>> a = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.int32(3)}
      >>> b = {"w": jnp.arange(6.0).reshape(2, 3)[::-1], "n": jnp.int32(3)}
      >>> fingerprint(a, replicated=None) == fingerprint(b, replicated=None)
      False
    """
    leaves = jax.tree.leaves(state)
    if not leaves:
        return []
    prints = _fingerprinter(replicated)(leaves)
    return [int(v) for v in np.asarray(prints.addressable_data(0)).ravel()]


@functools.cache
def _fingerprinter(replicated: jax.sharding.Sharding | None) -> Callable[..., Any]:
    # One jitted function per sharding, so that each save does not compile.
    return jax.jit(
        lambda xs: jnp.stack([_leaf_print(x) for x in xs]), out_shardings=replicated
    )


def _agree(ok: bool) -> bool:
    """Whether every process found its part of a restore sound."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Checkpoints:
    """Saves the train state every ``every`` steps and restores the newest.

    Every process constructs it with the same arguments and calls ``save``
    and ``restore`` at the same points (Orbax coordinates the processes).

    Args:
      directory: where the step directories go (created if missing); it must
        be visible to every process.
      every: save every this many steps (and at the last step).
      keep: how many of the newest checkpoints to keep; with 2 or more a
        corrupt newest one falls back to the one before.
      replicated: a replicated sharding of the mesh, or ``None`` off a mesh
        (where the fingerprint is gathered).

    Raises:
      ValueError: if ``every`` or ``keep`` is below 1.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every: int,
        keep: int,
        replicated: jax.sharding.Sharding | None,
    ) -> None:
        if every < 1:
            raise ValueError(
                f"checkpoint_every is {every}; it must be >= 1 (0 in the config: "
                "no checkpoints)."
            )
        if keep < 1:
            raise ValueError(f"checkpoint_keep is {keep}; it must be >= 1.")
        self.directory = os.path.abspath(directory)
        self.every = every
        self.replicated = replicated
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            # Leftovers of a save that was killed are not checkpoints.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=False,
        )
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(self.directory, options=self._options)

    def steps(self) -> list[int]:
        """The steps saved, oldest first."""
        return sorted(self._manager.all_steps())

    def due(self, step: int, *, last: int) -> bool:
        """Whether ``step`` is one to save at."""
        return step % self.every == 0 or step == last

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Saves ``state`` and ``meta`` as checkpoint ``step``; waits for it.

        Args:
          step: the number of train steps taken.
          state: a pytree of global ``jax.Array``.
          meta: JSON-serialisable: where training stands.
        """
        record = {**meta, "fingerprint": fingerprint(state, replicated=self.replicated)}
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(record)
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            self._write_manifest(step)

    def _manifest_path(self, step: int) -> str:
        return os.path.join(self.directory, MANIFESTS_DIR, f"{step}.json")

    def _sizes(self, step: int) -> dict[str, int]:
        root = os.path.join(self.directory, str(step))
        return {
            os.path.relpath(os.path.join(d, f), root): os.path.getsize(
                os.path.join(d, f)
            )
            for d, _, files in os.walk(root)
            for f in files
        }

    def _write_manifest(self, step: int) -> None:
        """Records the size of every file of the finished checkpoint ``step``.

        Written after Orbax has renamed the step into place, atomically; the
        manifests of steps Orbax has since deleted go with them.
        """
        path = self._manifest_path(step)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(self._sizes(step), f)
        os.replace(path + ".tmp", path)
        kept = {f"{s}.json" for s in self.steps()}
        for name in os.listdir(os.path.dirname(path)):
            if name.endswith(".json") and name not in kept:
                os.remove(os.path.join(os.path.dirname(path), name))

    def _check_manifest(self, step: int) -> str:
        """Why checkpoint ``step``'s files differ from its manifest, or ``""``.

        Every process sees the same files, so all reach the same verdict
        before any of them starts reading (a process that failed inside
        Orbax's restore would leave the others at its barrier). A missing
        manifest (a run killed just after the save) checks nothing.
        """
        try:
            with open(self._manifest_path(step)) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return ""
        except (OSError, ValueError) as e:
            return f"its manifest could not be read: {e}"
        found = self._sizes(step)
        for name, size in sorted(saved.items()):
            if name not in found:
                return f"{name} is missing"
            if found[name] != size:
                return f"{name} has {found[name]} bytes; {size} were saved"
        return ""

    def _read(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["meta"])

    def _set_aside(self, step: int) -> str:
        """Moves checkpoint ``step`` under ``corrupt/``; returns where."""
        dest = os.path.join(
            self.directory, CORRUPT_DIR, f"{step}.{time.strftime('%Y%m%dT%H%M%S')}"
        )
        if jax.process_index() == 0:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), dest)
            manifest = self._manifest_path(step)
            if os.path.exists(manifest):
                shutil.move(manifest, os.path.join(dest, "manifest.json"))
        multihost_utils.sync_global_devices(f"checkpoint set aside {step}")
        self._manager.close()
        self._manager = self._open()
        return dest

    def restore(self, target: Any) -> Restored | None:
        """The newest sound checkpoint, read into ``target``'s shardings.

        Args:
          target: the state's structure as ``jax.ShapeDtypeStruct`` leaves
            with the shardings wanted (any mesh, any number of processes).

        Returns:
          The checkpoint, or ``None`` if there is no sound one. Each newer
          checkpoint that failed to read or did not match its fingerprint is
          logged, moved to ``<directory>/corrupt/`` and listed in
          ``skipped``.
        """
        skipped: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            reason = self._check_manifest(step)
            if not reason:
                try:
                    state, meta = self._read(step, target)
                    saved = meta.pop("fingerprint", None)
                    if saved != fingerprint(state, replicated=self.replicated):
                        reason = "its state does not match its fingerprint"
                except Exception as e:  # any failure to read counts
                    reason = f"it could not be read: {type(e).__name__}: {e}"
            if not _agree(not reason):
                reason = reason or "another process could not read it"
                dest = self._set_aside(step)
                logging.warning("Checkpoint %d is unusable (%s)", step, reason)
                if jax.process_index() == 0:
                    print(
                        f"checkpoint {step} is unusable ({reason.splitlines()[0]}); "
                        f"moved to {dest}; trying the one before",
                        flush=True,
                    )
                skipped.append((step, reason))
                continue
            return Restored(step, state, meta, skipped)
        return None

    def close(self) -> None:
        """Waits for any save and releases the manager."""
        self._manager.close()
