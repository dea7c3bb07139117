"""Data-parallel + FSDP training with GC on a mesh of 8 simulated CPU devices.

    python -m examples.sharded.main --workdir=/tmp/sharded --show_collectives

If ``XLA_FLAGS`` does not already set a device count, this file sets
``--xla_force_host_platform_device_count=8`` before jax is imported, so the
host CPU shows up as 8 devices. Set ``XLA_FLAGS`` yourself for another count;
the flag does nothing to GPUs or TPUs.

As several local processes: ``python -m examples.sharded.launch
--num_processes=2 -- --workdir=/tmp/mp`` (``launch.py``). On several hosts,
run the same command on every host with ``--distributed`` (and, where jax
cannot detect the cluster, ``--coordinator_address``, ``--num_processes`` and
``--process_id``): ``jax.distributed.initialize`` runs first and the mesh
spans every host's devices. With ``--config.checkpoint_every=N`` the run
saves checkpoints to ``<workdir>/checkpoints`` and resumes from the newest
sound one. See README.md.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import json  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from examples.sharded import collectives, train  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "workdir",
    None,
    "Directory for metrics.json, params.npz and checkpoints/.",
    required=True,
)
flags.DEFINE_bool(
    "show_collectives",
    False,
    "Compile the sharded step with and without GC, print its collectives and "
    "what GC adds, and write them to collectives.json in the workdir.",
)
flags.DEFINE_bool(
    "distributed",
    False,
    "Call jax.distributed.initialize() first: one process per host.",
)
flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (with --distributed)."
)
flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (--distributed).")
config_flags.DEFINE_config_file(
    "config",
    os.path.join(os.path.dirname(__file__), "configs", "default.py"),
    "Training configuration.",
    lock_config=True,
)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.distributed:
        # CPU devices of several processes talk through gloo (jax's CPU
        # collectives); the setting does nothing to GPUs and TPUs.
        if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        # Before anything touches a device. None: detected from the cluster.
        jax.distributed.initialize(
            FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    config = FLAGS.config
    lead = jax.process_index() == 0
    if FLAGS.show_collectives:
        report = collectives.report(config)
        if lead:
            print(collectives.table(report), "\n", flush=True)
            os.makedirs(FLAGS.workdir, exist_ok=True)
            with open(os.path.join(FLAGS.workdir, "collectives.json"), "w") as f:
                json.dump(report, f, indent=2)
    m = train.train_and_evaluate(config, FLAGS.workdir)
    if not lead:
        return
    print(
        f"mesh {m['mesh']}: {m['devices']} devices on {jax.process_count()} "
        f"process(es); data: {m['data_source']}"
    )
    for h in m["history"]:
        print(
            f"epoch {h['epoch']:3d}  train loss {h['train_loss']:.4f}  "
            f"test loss {h['test_loss']:.4f}  test accuracy {h['test_accuracy']:.4f}"
        )
    for step, reason in m["skipped_checkpoints"]:
        print(f"skipped checkpoint {step}: {reason.splitlines()[0]}")
    if m["resumed_from"]:
        print(f"resumed from the checkpoint of step {m['resumed_from']}")
    print(f"trained in {m['seconds']:.1f} s")
    print(
        "largest change of a weight: "
        f"{max(m['weight_change'].values()):.1e}; of a fan-in weight sum: "
        f"{max(m['fan_in_sum_change'].values()):.1e}"
    )
    if "single_device" in m:
        s = m["single_device"]
        print(
            f"one device, no mesh, same seed: test accuracy {s['test_accuracy']:.4f}"
            "; largest parameter difference from the sharded run after epoch"
        )
        for e in s["per_epoch"]:
            print(
                f"  {e['epoch']:3d}: {e['max_abs']:.1e} (relative {e['max_rel']:.1e})"
            )


if __name__ == "__main__":
    app.run(main)
