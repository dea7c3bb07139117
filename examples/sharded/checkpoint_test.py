"""Every recipe's optimizer state through a checkpoint, into other shardings.

In this process, on the 8 CPU devices the root ``conftest.py`` asks for: the
state of each ``optax_gc`` recipe (masked GC slots, decay, moments, counts,
schedules' counters) is saved from FSDP shardings on a 4x2 mesh and read back
into those of a 2x4 mesh (and, for some, of a single device), bit for bit, and the step
after the restore is, bit for bit, the step after the saved state moved there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import optax_gc
from examples.sharded import checkpoint, train

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs 8 devices (root conftest.py sets them)"
)

SHAPES = {
    "conv": {"kernel": (3, 3, 16, 32), "bias": (32,)},
    "dense": {"kernel": (512, 10), "bias": (10,)},
}
ONE_DEVICE = ("sgd", "adamw", "lamb")
SCHEDULE = optax.linear_schedule(1e-2, 1e-3, 10)


def _recipe(name: str) -> optax.GradientTransformation:
    # A schedule where the recipe takes one: its counter is state too.
    return getattr(optax_gc, name)(SCHEDULE)


def _shardings(tx: optax.GradientTransformation, params: Any, mesh: Any) -> Any:
    """FSDP params on ``mesh`` (or one device), the state like the params."""
    if mesh is None:
        one = SingleDeviceSharding(jax.devices()[0])
        state = jax.eval_shape(tx.init, params)
        return jax.tree.map(lambda _: one, params), jax.tree.map(lambda _: one, state)
    specs = train.param_specs(params, fsdp_size=mesh.shape["fsdp"], min_size=1024)
    at = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    replicated = NamedSharding(mesh, P())
    state_at = optax.tree_map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, params),
        at,
        transform_non_params=lambda _: replicated,
    )
    return at, state_at


def _step(tx: optax.GradientTransformation) -> Any:
    def f(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(f)


@pytest.mark.parametrize("name", train.RECIPES)
def test_recipe_state_restores_into_other_shardings(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    host = jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32),
        SHAPES,
        is_leaf=lambda s: isinstance(s, tuple),
    )
    grads = jax.tree.map(lambda x: x * np.float32(0.1) + np.float32(0.3), host)
    tx = _recipe(name)
    mesh = train.make_mesh((4, 2))
    with jax.numpy_dtype_promotion("standard"):
        at, state_at = _shardings(tx, host, mesh)
        params = jax.device_put(host, at)
        state = jax.jit(tx.init, out_shardings=state_at)(params)
        params, state = _step(tx)(params, state, grads)  # counts, moments set
        saved = {"params": params, "opt_state": state}
        ckpt = checkpoint.Checkpoints(
            tmp_path, every=1, keep=2, replicated=NamedSharding(mesh, P())
        )
        ckpt.save(1, saved, {"step": 1})
        # Every recipe into a 2x4 mesh; a few into one device too (the same
        # code path, and each costs its compilations).
        others = [train.make_mesh((2, 4))] + ([None] if name in ONE_DEVICE else [])
        for other in others:
            o_at, o_state_at = _shardings(tx, host, other)
            target = train._abstract(saved, {"params": o_at, "opt_state": o_state_at})
            reader = checkpoint.Checkpoints(
                tmp_path,
                every=1,
                keep=2,
                replicated=None if other is None else NamedSharding(other, P()),
            )
            got = reader.restore(target)
            assert got is not None and got.step == 1 and not got.skipped
            assert jax.tree.structure(got.state) == jax.tree.structure(saved)
            for a, b, s in zip(
                jax.tree.leaves(got.state),
                jax.tree.leaves(saved),
                jax.tree.leaves(target),
                strict=True,
            ):
                assert a.sharding.is_equivalent_to(s.sharding, a.ndim)
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            # The step after the restore is the step after the saved state
            # moved to these shardings (device_put), bit for bit.
            moved = jax.device_put(saved, {"params": o_at, "opt_state": o_state_at})
            nxt = _step(tx)(got.state["params"], got.state["opt_state"], grads)
            ref = _step(tx)(moved["params"], moved["opt_state"], grads)
            for a, b in zip(jax.tree.leaves(nxt), jax.tree.leaves(ref), strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            reader.close()
        ckpt.close()


@pytest.mark.parametrize(
    ("every", "keep", "says"),
    [(-1, 3, "checkpoint_every is -1"), (2, 0, "checkpoint_keep is 0")],
)
def test_bad_counts_are_errors(
    tmp_path: Path, every: int, keep: int, says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        checkpoint.Checkpoints(tmp_path, every=every, keep=keep, replicated=None)
