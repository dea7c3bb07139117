r"""Runs the sharded example as several local JAX processes, and supervises them.

    python -m examples.sharded.launch --num_processes=2 --devices_per_process=4 \\
        -- --workdir=/tmp/mp --config.checkpoint_every=20

starts ``--num_processes`` copies of ``python -m examples.sharded.main
--distributed`` on this machine, each with ``--devices_per_process`` CPU
devices, a coordinator on a free 127.0.0.1 port and gloo collectives; the
arguments after ``--`` go to every copy. Together they form one JAX program
over all their devices (``jax.distributed``), as the hosts of a cluster do.
Each line a process prints is prefixed with its index.

If a process fails, the launcher stops the others (SIGTERM, then SIGKILL
after ``--grace_seconds``) and exits with that process's exit status (128 +
the signal for a signal), after printing the end of its error output: a
process blocked in a collective waiting for a dead peer never hangs the job.
If the launcher itself is killed, so are the processes (Linux).

On a real cluster there is no launcher: run ``python -m examples.sharded.main
--distributed`` once per host (SLURM: ``srun``; Cloud TPU: on every worker)
and ``jax.distributed.initialize()`` finds the coordinator, the process count
and the index from the environment; elsewhere pass ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (README.md, "Several hosts").
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_processes", 2, "How many processes to start.")
flags.DEFINE_integer(
    "devices_per_process", 4, "CPU devices each process simulates (XLA_FLAGS)."
)
flags.DEFINE_string(
    "module", "examples.sharded.main", "The module each process runs (python -m)."
)
flags.DEFINE_integer("port", 0, "The coordinator's 127.0.0.1 port; 0: a free one.")
flags.DEFINE_float(
    "grace_seconds",
    10.0,
    "After a process fails, how long the others get to stop on SIGTERM before SIGKILL.",
)

TAIL_LINES = 30


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def describe(code: int) -> str:
    """``"exit code 3"`` or ``"signal SIGKILL"`` for a ``Popen.returncode``."""
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def exit_status(code: int) -> int:
    """The shell's status for a ``Popen.returncode``: 128 + N for signal N."""
    return 128 - code if code < 0 else code


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the kernel sends SIGKILL to this process when the launcher dies.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _pump(stream: IO[str], out: IO[str], prefix: str, tail: collections.deque) -> None:
    for line in stream:
        tail.append(line)
        out.write(prefix + line)
        out.flush()


def _device_flags(devices: int) -> str:
    kept = [
        f
        for f in os.environ.get("XLA_FLAGS", "").split()
        if not f.startswith("--xla_force_host_platform_device_count")
    ]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def command(
    module: str, args: Sequence[str], *, port: int, n: int, i: int
) -> list[str]:
    """The command line of process ``i`` of ``n``.

    Example:
      >>> command("examples.sharded.main", ["--workdir=/tmp/w"], port=1234,
      ...         n=2, i=1)[2:]  # doctest: +NORMALIZE_WHITESPACE
      ['examples.sharded.main', '--distributed',
       '--coordinator_address=127.0.0.1:1234', '--num_processes=2',
       '--process_id=1', '--workdir=/tmp/w']
    """
    return [
        sys.executable,
        "-m",
        module,
        "--distributed",
        f"--coordinator_address=127.0.0.1:{port}",
        f"--num_processes={n}",
        f"--process_id={i}",
        *args,
    ]


def _stop(procs: Sequence[subprocess.Popen], grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(
    args: Sequence[str],
    *,
    num_processes: int,
    devices_per_process: int,
    module: str = "examples.sharded.main",
    port: int = 0,
    grace_seconds: float = 10.0,
) -> int:
    """Starts the processes, waits for them all, and returns the job's status.

    Args:
      args: the arguments every process gets after the distributed ones.
      num_processes: how many processes.
      devices_per_process: CPU devices each one simulates.
      module: what each runs with ``python -m``.
      port: the coordinator's 127.0.0.1 port (0: a free one).
      grace_seconds: how long the others get after a failure before SIGKILL.

    Returns:
      0 if every process exited with 0, otherwise the status of the first
      one seen failing (128 + N for signal N).

    Raises:
      ValueError: if ``num_processes`` or ``devices_per_process`` is below 1.
    """
    if num_processes < 1 or devices_per_process < 1:
        raise ValueError(
            f"num_processes={num_processes} and devices_per_process="
            f"{devices_per_process} must both be >= 1."
        )
    port = port or free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": _device_flags(devices_per_process),
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "PYTHONUNBUFFERED": "1",
    }
    procs = [
        subprocess.Popen(
            command(module, args, port=port, n=num_processes, i=i),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        for i in range(num_processes)
    ]
    tails = [collections.deque(maxlen=TAIL_LINES) for _ in procs]
    pumps = [
        threading.Thread(target=_pump, args=(stream, out, f"[{i}] ", tail))
        for i, (p, tail) in enumerate(zip(procs, tails, strict=True))
        for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr))
    ]
    for t in pumps:
        t.start()
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                _stop(procs, grace_seconds)
                for t in pumps:
                    t.join(timeout=5)
                sys.stderr.write(
                    f"launch: process {i} of {num_processes} failed with "
                    f"{describe(codes[i])}; stopped the others. Its last lines:\n"
                    + "".join(f"  [{i}] {line}" for line in tails[i])
                )
                return exit_status(codes[i])
            if all(c == 0 for c in codes):
                for t in pumps:
                    t.join()
                return 0
            time.sleep(0.05)
    finally:
        _stop(procs, grace_seconds)


def main(argv: list[str]) -> None:
    sys.exit(
        launch(
            argv[1:],
            num_processes=FLAGS.num_processes,
            devices_per_process=FLAGS.devices_per_process,
            module=FLAGS.module,
            port=FLAGS.port,
            grace_seconds=FLAGS.grace_seconds,
        )
    )


if __name__ == "__main__":
    # SIGTERM (a scheduler's, a test's) stops the processes too: via finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    app.run(main)
