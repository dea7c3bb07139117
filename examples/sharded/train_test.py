"""The sharded example on tiny settings: 8 CPU devices in 1 process or in 2.

Every run is a real ``python -m`` subprocess with its own ``XLA_FLAGS``,
strict dtype promotion and rank promotion that raises, so the result does
not depend on how this test process imported jax. Two reference runs train
the same seed on the same 4x2 mesh (256 digits, 3 epochs of 4 steps, a
checkpoint every 2 steps): one process of 8 devices (with warnings as
errors, then the same seed on one device, plus the HLO of the step with and
without GC), and 2 processes of 4 devices on localhost through the launcher
(jax.distributed, gloo collectives). The other runs are killed, resumed, or
resume from copies of their checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3 * (256 // 64)
EVERY, KEEP = 2, 3
CONFIG = [
    "--config.train_limit=256",
    "--config.batch_size=64",
    "--config.num_epochs=3",
    f"--config.checkpoint_every={EVERY}",
    f"--config.checkpoint_keep={KEEP}",
]
TIMEOUT = 300


def _env(devices: int) -> dict[str, str]:
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "JAX_NUMPY_DTYPE_PROMOTION": "strict",
        "JAX_NUMPY_RANK_PROMOTION": "raise",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
        ),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("sharded")
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
        *CONFIG,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {
        "workdir": workdir,
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


# ------------------------------------------------ processes and checkpoints


def one_process(workdir: Path, mesh: str = "(4, 2)") -> list[str]:
    """``main.py`` in one process with 8 devices."""
    return [
        sys.executable,
        "-m",
        "examples.sharded.main",
        f"--workdir={workdir}",
        *CONFIG,
        "--config.compare_single_device=False",
        f"--config.mesh_shape={mesh}",
    ]


def two_processes(workdir: Path, mesh: str = "(4, 2)") -> list[str]:
    """``main.py`` as 2 processes of 4 devices, through the launcher."""
    return [
        sys.executable,
        "-m",
        "examples.sharded.launch",
        "--num_processes=2",
        "--devices_per_process=4",
        "--grace_seconds=5",
        "--",
        f"--workdir={workdir}",
        *CONFIG,
        "--config.compare_single_device=False",
        f"--config.mesh_shape={mesh}",
    ]


def execute(cmd: list[str], *, devices: int = 8) -> str:
    """Runs ``cmd`` to the end; returns its stdout; fails with its output."""
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_env(devices),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    return proc.stdout


def params(workdir: Path) -> dict[str, np.ndarray]:
    with np.load(workdir / "params.npz") as f:
        return dict(f)


def steps(workdir: Path) -> list[int]:
    """The finished checkpoints' steps (Orbax renames a step dir when done)."""
    ckpt = workdir / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())


def copy_up_to(src: Path, dst: Path, step: int) -> Path:
    """A copy of ``src``'s checkpoints, without those after ``step``."""
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    for s in steps(dst):
        if s > step:
            shutil.rmtree(dst / "checkpoints" / str(s))
    return dst


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        # float32 reduction order only (different partitions and
        # collectives): measured below 1e-7.
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)


def assert_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def refs(
    run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The uninterrupted runs: 1 process x 8 devices (``run``), and 2 x 4."""
    two = tmp_path_factory.mktemp("two")
    out_two = execute(two_processes(two))
    return {
        "two": two,
        "one": run["workdir"],
        "stdout_two": out_two,
        "stdout_one": run["stdout"],
    }


def test_two_processes_equal_one(refs: dict[str, Any]) -> None:
    assert "8 devices on 2 process(es)" in refs["stdout_two"]
    assert "8 devices on 1 process(es)" in refs["stdout_one"]
    assert_close(params(refs["two"]), params(refs["one"]))
    # Both kept the newest KEEP checkpoints, the last one at the last step.
    assert steps(refs["two"]) == steps(refs["one"]) == [8, 10, 12]


def test_sigkill_then_resume_gives_the_uninterrupted_params(
    refs: dict[str, Any], tmp_path: Path
) -> None:
    log = (tmp_path / "log").open("w")
    job = subprocess.Popen(
        two_processes(tmp_path),
        cwd=ROOT,
        env=_env(4),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the launcher and both
    )
    deadline = time.monotonic() + TIMEOUT
    while not (tmp_path / "checkpoints").is_dir() or not any(
        s >= 2 * EVERY for s in steps(tmp_path)
    ):
        assert job.poll() is None, (tmp_path / "log").read_text()[-5000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both processes
    job.wait()
    log.close()
    saved = steps(tmp_path)
    assert max(saved) < STEPS and not (tmp_path / "params.npz").exists(), saved
    out = execute(two_processes(tmp_path), devices=4)
    assert f"resumed from the checkpoint of step {max(saved)}" in out
    assert_equal(params(tmp_path), params(refs["two"]))
    # A save the kill interrupted left a temporary directory: removed.
    left = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert not [name for name in left if "tmp" in name], left


def test_refuses_the_checkpoint_of_another_run(
    refs: dict[str, Any], tmp_path: Path
) -> None:
    copy_up_to(refs["one"], tmp_path, STEPS)
    proc = subprocess.run(
        [*one_process(tmp_path), "--config.seed=1"],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode != 0
    assert "is of another run (seed 0" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    ("writer", "reader", "mesh"),
    [("two", "one", "(2, 4)"), ("one", "two", "(8, 1)")],
    ids=["2-processes-into-1", "1-process-into-2"],
)
def test_restore_into_another_process_count_and_sharding(
    refs: dict[str, Any], tmp_path: Path, writer: str, reader: str, mesh: str
) -> None:
    copy_up_to(refs[writer], tmp_path, 8)
    if reader == "one":
        out = execute(one_process(tmp_path, mesh))
    else:
        out = execute(two_processes(tmp_path, mesh), devices=4)
    assert "resumed from the checkpoint of step 8" in out
    assert f"mesh {{'data': {mesh[1]}, 'fsdp': {mesh[4]}}}" in out
    assert_close(params(tmp_path), params(refs[reader]))


def _truncate(step_dir: Path) -> None:
    # The largest array file of the state, cut in half.
    biggest = max(
        (p for p in (step_dir / "state").rglob("*") if p.is_file()),
        key=lambda p: p.stat().st_size,
    )
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])


def _swap_state(step_dir: Path) -> None:
    # A readable state, but another step's, and no manifest of file sizes
    # (as after a run killed between the save and the manifest): only the
    # fingerprint tells.
    shutil.rmtree(step_dir / "state")
    shutil.copytree(
        step_dir.parent / str(int(step_dir.name) - EVERY) / "state", step_dir / "state"
    )
    (step_dir.parent / "manifests" / f"{step_dir.name}.json").unlink()


def test_corrupt_checkpoints_are_set_aside_and_the_sound_one_used(
    refs: dict[str, Any], tmp_path: Path
) -> None:
    copy_up_to(refs["one"], tmp_path, STEPS)
    ckpt = tmp_path / "checkpoints"
    _truncate(ckpt / str(STEPS))  # fails to read
    _swap_state(ckpt / str(STEPS - EVERY))  # reads, but is not what was saved
    out = execute(one_process(tmp_path))
    assert f"checkpoint {STEPS} is unusable (state/" in out  # the file named
    assert "bytes; " in out and " were saved)" in out
    stale = f"checkpoint {STEPS - EVERY} is unusable (its state does not match"
    assert stale in out
    assert f"resumed from the checkpoint of step {STEPS - 2 * EVERY}" in out
    assert_equal(params(tmp_path), params(refs["one"]))
    # Nothing saved is lost: the damaged ones are set aside, the sound one
    # kept, and the run saved its own newer steps again.
    aside = sorted(p.name.split(".")[0] for p in (ckpt / "corrupt").iterdir())
    assert aside == [str(STEPS - EVERY), str(STEPS)]
    assert steps(tmp_path) == [8, 10, 12]


FAILING = """
import os, signal, sys, time
from absl import app, flags
flags.DEFINE_bool("distributed", False, "")
flags.DEFINE_string("coordinator_address", None, "")
flags.DEFINE_integer("num_processes", None, "")
flags.DEFINE_integer("process_id", None, "")
flags.DEFINE_string("how", "raise", "")
FLAGS = flags.FLAGS

def main(argv):
    if FLAGS.process_id == 0:
        time.sleep(600)  # as a process blocked on a dead peer would
    elif FLAGS.how == "raise":
        raise RuntimeError("process 1 gave up")
    else:
        os.kill(os.getpid(), signal.SIGKILL)

app.run(main)
"""


@pytest.mark.parametrize(
    ("how", "status", "says"),
    [("raise", 1, "RuntimeError: process 1 gave up"), ("kill", 137, "signal SIGKILL")],
)
def test_launcher_stops_the_others_when_one_fails(
    tmp_path: Path, how: str, status: int, says: str
) -> None:
    (tmp_path / "failing.py").write_text(FAILING)
    env = {**_env(4), "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    cmd = [
        sys.executable,
        "-m",
        "examples.sharded.launch",
        "--module=failing",
        "--grace_seconds=2",
        "--",
        f"--how={how}",
    ]
    start = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == status, proc.stderr
    assert time.monotonic() - start < 30  # not the 600 s process 0 would wait
    assert "process 1 of 2 failed with" in proc.stderr
    assert says in proc.stderr
