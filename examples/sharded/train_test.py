"""The sharded example on tiny settings, on 8 simulated CPU devices.

``main.py`` runs in a subprocess with its own ``XLA_FLAGS`` (8 host devices),
strict dtype promotion, rank promotion that raises and warnings as errors,
so the result does not depend on how this test process imported jax. One run
(a 4x2 mesh, 256 digits, 3 epochs of 4 steps, then the same seed on one
device, plus the HLO of the step with and without GC) feeds every test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3 * (256 // 64)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("sharded")
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
        "JAX_NUMPY_RANK_PROMOTION": "raise",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }
    cmd = [
        sys.executable,
        "-W",
        "error",
        # ml_collections' config_flags loads the config file with importlib's
        # deprecated load_module(); not this example's doing.
        "-W",
        "ignore:the load_module() method is deprecated:DeprecationWarning",
        "-m",
        "examples.sharded.main",
        f"--workdir={workdir}",
        "--show_collectives",
        "--config.mesh_shape=(4, 2)",
        "--config.train_limit=256",
        "--config.batch_size=64",
        "--config.num_epochs=3",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {
        "stdout": proc.stdout,
        "metrics": json.loads((workdir / "metrics.json").read_text()),
        "collectives": json.loads((workdir / "collectives.json").read_text()),
    }


def test_trains_on_the_mesh(run: dict[str, Any]) -> None:
    m = run["metrics"]
    assert m["mesh"] == {"data": 4, "fsdp": 2}
    assert m["devices"] == 8
    assert len(m["step_losses"]) == STEPS
    assert all(0 < v < 10 for v in m["step_losses"])  # finite, sane
    assert m["train_loss"] < m["initial_train_loss"] - 0.1
    assert m["history"][-1]["test_loss"] < m["history"][0]["test_loss"]
    assert "largest parameter difference" in run["stdout"]


def test_params_are_fsdp_sharded(run: dict[str, Any]) -> None:
    # The Dense 512 -> 10 kernel is sharded along its fan-in axis, the other
    # large kernels along their output axis; small leaves are replicated.
    specs = run["metrics"]["param_specs"]
    assert specs["dense2/kernel"] == ["fsdp", None]
    assert specs["dense1/kernel"] == [None, "fsdp"]
    assert specs["conv2/kernel"] == [None, None, None, "fsdp"]
    assert specs["conv3/kernel"] == [None, None, None, "fsdp"]
    assert specs["conv1/kernel"] == []
    assert all(specs[f"{layer}/bias"] == [] for layer in ("conv3", "dense1", "dense2"))


def test_equals_single_device_run(run: dict[str, Any]) -> None:
    single = run["metrics"]["single_device"]
    assert len(single["per_epoch"]) == 3
    for epoch in single["per_epoch"]:
        # float32 reduction order only: measured about 1e-7.
        assert epoch["max_abs"] < 1e-5, epoch
        assert epoch["max_rel"] < 1e-4, epoch
    assert single["max_abs_loss"] < 1e-5


def test_gc_adds_only_the_per_output_mean_all_reduce(run: dict[str, Any]) -> None:
    rep = run["collectives"]
    # Only the Dense 512 -> 10 kernel is sharded along a fan-in axis.
    assert rep["expected"] == {"dense2/kernel": 10}
    added = [(c["op"], c["array"], c["axes"]) for c in rep["added"]]
    assert added == [("all-reduce", "f32[10]", "fsdp")]
    assert rep["removed"] == []
    # The step itself moves far more: GC's 40 bytes are a small addition.
    assert sum(c["bytes"] for c in rep["without_gc"]) > 1000 * 40
    assert "<- yes" in run["stdout"]


def test_gc_is_active(run: dict[str, Any]) -> None:
    # GC before SGD with momentum: every update is a sum of centralized
    # gradients, so no output unit's fan-in weight sum moves, while the
    # weights themselves do.
    m = run["metrics"]
    kernels = {f"{k}/kernel" for k in ("conv1", "conv2", "conv3", "dense1", "dense2")}
    assert set(m["fan_in_sum_change"]) == set(m["weight_change"]) == kernels
    for name, moved in m["weight_change"].items():
        assert moved > 1e-3, name
        assert m["fan_in_sum_change"][name] < 1e-5, name
