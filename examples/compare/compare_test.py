"""The comparison trains for real on tiny settings, and its numbers add up.

One run (digits, 2 seeds, 2 epochs of 16 steps, SGD and Adam) feeds most
tests; a second (RMSprop, one seed, GC on the update of conv kernels only,
three held-out evaluations per epoch) covers the other branch of the
GC-active check and evaluations within an epoch. Summary numbers are
recomputed here from the per-run records and from the CSV, independently of
the example's helpers.
"""

import contextlib
import csv
import io
import json
import math

import jax
import numpy as np
import pytest

from examples.compare import train
from examples.compare.configs import default

# optax's adam/rmsprop count arithmetic is not strict-promotion safe.
pytestmark = pytest.mark.standard_promotion

T975_DOF1 = 12.706204736174705  # Student t, 97.5% quantile, 1 degree of freedom


def tiny_config(**overrides):
    """2 epochs of 16 steps, with learning rates high enough to learn in 32."""
    config = default.get_config()
    config.update(seeds=2, epochs=2, batch_size=32, train_limit=512, test_limit=128)
    config.update(progress=False, lr_sgd=0.05, lr_adam=3e-3, lr_rmsprop=1e-3)
    config.update(overrides)
    return config


def run_tiny(config, workdir):
    out = io.StringIO()
    # The module fixture runs before the per-test promotion fixture; say so.
    with contextlib.redirect_stdout(out), jax.numpy_dtype_promotion("standard"):
        res = train.train_and_evaluate(config, str(workdir))
    return res, out.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    res, text = run_tiny(tiny_config(optimizers="sgd,adam"), out)
    return res, text, out


@pytest.fixture(scope="module")
def run_update(tmp_path_factory):
    config = tiny_config(
        optimizers="rmsprop",
        seeds=1,
        apply_to="update",
        conv_only=True,
        evals_per_epoch=3,
    )
    return run_tiny(config, tmp_path_factory.mktemp("compare_update"))


def test_writes_all_files_and_they_parse(run):
    res, _, out = run
    data = json.loads((out / "results.json").read_text())
    assert data["summary"].keys() == {"sgd", "adam"}
    assert data["summary"] == json.loads(json.dumps(res["summary"]))
    assert data["command"].startswith("python -m examples.compare --config.")
    assert "--config.optimizers=sgd,adam" in data["command"]
    assert data["command"].endswith(f"--workdir={out}")
    assert data["config"]["seeds"] == 2 and data["config"]["out"] == str(out)
    assert data["environment"]["jax"] == jax.__version__
    assert data["environment"]["cpu_count"] >= 1
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 2 * 2 * 2  # optimizers x arms x seeds x epochs
    assert {(r["optimizer"], r["arm"], r["seed"], r["epoch"]) for r in rows} == {
        (o, a, s, e)
        for o in ("sgd", "adam")
        for a in ("gc", "baseline")
        for s in "01"
        for e in ("1.0", "2.0")
    }
    for r in rows:
        assert 0 <= float(r["test_acc"]) <= 1 and float(r["train_time_s"]) > 0
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (out / "summary.md").read_text()
    assert "| test accuracy |" in md and md.count("GC active: yes") == 2


def test_default_command_is_the_bare_module():
    assert train.command(default.get_config(), None) == "python -m examples.compare"


def test_trains_above_chance(run):
    res, _, _ = run
    assert len(res["runs"]) == 8
    for r in res["runs"]:
        first, last = r["evals"]
        # From chance (loss ln 10 = 2.30, accuracy 0.1), 32 steps reach
        # train losses of 1.9-2.2 and test accuracies of 0.34-0.75.
        assert math.isfinite(last["train_loss"])
        assert last["train_loss"] < first["train_loss"] < 2.6
        assert 0.2 < last["test_acc"] <= 1.0


def test_both_arms_of_a_seed_start_from_the_same_state(run):
    res, _, _ = run
    sums = {
        (r["optimizer"], r["seed"], r["arm"]): r["init_checksum"] for r in res["runs"]
    }
    assert len(sums) == 8
    for name in ("sgd", "adam"):
        for seed in (0, 1):
            assert sums[name, seed, "gc"] == sums[name, seed, "baseline"]
        assert sums[name, 0, "gc"] != sums[name, 1, "gc"]
    assert sums["sgd", 0, "gc"] == sums["adam", 0, "gc"]


def test_summary_matches_the_per_seed_records_and_the_csv(run):
    res, _, out = run
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    for name, s in res["summary"].items():
        per_seed = {}
        for arm in ("gc", "baseline"):
            mine = sorted(
                (
                    r
                    for r in rows
                    if r["optimizer"] == name
                    and r["arm"] == arm
                    and r["epoch"] == "2.0"
                ),
                key=lambda r: int(r["seed"]),
            )
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                v = np.array([float(r[key]) for r in mine])
                stat = s["arms"][arm][key]
                assert stat["mean"] == pytest.approx(v.mean(), rel=1e-6)
                assert stat["std"] == pytest.approx(v.std(ddof=1), rel=1e-6, abs=1e-12)
                per_seed[arm, key] = v
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            d = per_seed["gc", key] - per_seed["baseline", key]
            ci = s["difference"][key]
            assert ci["mean"] == pytest.approx(d.mean(), rel=1e-6, abs=1e-12)
            half = T975_DOF1 * d.std(ddof=1) / math.sqrt(2)
            assert ci["ci_low"] == pytest.approx(d.mean() - half, abs=1e-9)
            assert ci["ci_high"] == pytest.approx(d.mean() + half, abs=1e-9)
            assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]


def test_gc_active_measures_what_gc_produced(run):
    res, text, _ = run
    for name in ("sgd", "adam"):
        check = res["summary"][name]["gc_active"]
        assert check["active"] == "yes"
        assert check["measured"] == "the gradient entering the optimizer"
        assert len(check["targeted_kernels"]) == 5
        assert check["gc_max"] < 1e-5  # float32 rounding
        assert check["baseline_max"] > 1e-2
        per = check["per_kernel"]
        for k in check["targeted_kernels"]:
            assert per["gc"]["received"][k] < 1e-5, k
            assert per["baseline"]["received"][k] > 1e-4, k
    # SGD with momentum is linear, so its applied step stays centred; Adam
    # divides each entry by its own scale, so its step is not centred even
    # with GC: that is why the check looks at the optimizer's input.
    sgd = res["summary"]["sgd"]["gc_active"]["per_kernel"]["gc"]["applied"]
    adam = res["summary"]["adam"]["gc_active"]["per_kernel"]["gc"]["applied"]
    assert max(sgd.values()) < 1e-5
    assert max(adam.values()) > 1e-3
    assert text.count("GC active: yes") == 2
    assert "adam rescales each entry after GC" in text


def test_gc_on_update_of_conv_kernels_only(run_update):
    res, text = run_update
    check = res["summary"]["rmsprop"]["gc_active"]
    assert check["active"] == "yes"
    assert check["measured"] == "the applied update"
    assert check["targeted_kernels"] == ["conv1/kernel", "conv2/kernel", "conv3/kernel"]
    assert check["gc_max"] < 1e-5 and check["baseline_max"] > 1e-3
    # conv_only: the Dense kernels are left alone, so their steps are not centred.
    applied = check["per_kernel"]["gc"]["applied"]
    assert applied["dense1/kernel"] > 1e-3 and applied["dense2/kernel"] > 1e-3
    assert "GC on the update of conv kernels only" in text
    # One seed: no interval, and the table says so instead of inventing one.
    assert res["summary"]["rmsprop"]["difference"]["test_acc"]["ci_low"] is None
    assert "[n/a]" in text


def test_evals_within_epochs(run_update):
    res, text = run_update
    (run,) = [r for r in res["runs"] if r["arm"] == "gc"]
    # 16 steps per epoch in 3 segments: 5, 5 and 6 steps.
    assert [e["step"] for e in run["evals"]] == [5, 11, 16, 21, 27, 32]
    assert [e["epoch"] for e in run["evals"]] == pytest.approx(
        [5 / 16, 11 / 16, 1, 1 + 5 / 16, 1 + 11 / 16, 2]
    )
    assert len(run["epoch_time_s"]) == 2
    assert sum(run["epoch_time_s"]) == pytest.approx(
        sum(e["train_time_s"] for e in run["evals"])
    )
    assert "the last 1/3 epoch's batches" in text


def test_gc_arm_equals_the_package_recipe(run, run_update):
    for res in (run[0], run_update[0]):
        for s in res["summary"].values():
            check = s["recipe_check"]
            assert check["recipe"].startswith("optax_gc.")
            assert check["max_relative_difference"] <= 1e-9


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"optimizers": "adagrad"}, "config.optimizers"),
        ({"seeds": 0}, "config.seeds"),
        ({"apply_to": "both"}, "config.apply_to"),
        ({"dataset": "cifar"}, "config.dataset"),
        ({"batch_size": 10_000}, "config.batch_size"),
        ({"evals_per_epoch": 99}, "config.evals_per_epoch"),
    ],
)
def test_bad_options_name_the_field(overrides, field, tmp_path):
    with pytest.raises(ValueError, match=field):
        train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


# --- the BatchNorm ResNet with the authors' SGD recipe ---------------------------

# The baseline and two GC arms: conv_only and apply_to="update" (SGD_GC is
# the same code with neither; its algorithm is checked in the recipe test).
# Each arm is one compilation of the train step, most of this run's time.
RESNET_ARMS = ("baseline", "gcc", "gc_update")


@pytest.fixture(scope="module")
def run_resnet(tmp_path_factory):
    """A ResNet-8 of width 4 on 8x8 digits: 2 seeds, 2 epochs of 8 steps, 3 arms."""
    config = tiny_config(
        model="resnet",
        resnet_arms="gcc,gc_update",
        optimizers=default.get_config().optimizers,
        lr_sgd=default.get_config().lr_sgd,
        lr_adam=default.get_config().lr_adam,
        lr_rmsprop=default.get_config().lr_rmsprop,
        train_limit=256,
        test_limit=64,
        resnet_width=4,
    )
    out = tmp_path_factory.mktemp("compare_resnet")
    res, text = run_tiny(config, out)
    return res, text, out


def test_resnet_arms_share_init_and_batches(run_resnet):
    res, _, out = run_resnet
    assert res["config"]["model"] == "resnet"
    assert res["command"].startswith("python -m examples.compare ")
    assert "--config.model=resnet" in res["command"]
    runs = {(r["arm"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {(a, s) for a in RESNET_ARMS for s in (0, 1)}
    for seed in (0, 1):
        sums = {runs[a, seed]["init_checksum"] for a in RESNET_ARMS}
        assert len(sums) == 1  # params and BN statistics, the same in every arm
    assert runs["gcc", 0]["init_checksum"] != runs["gcc", 1]["init_checksum"]
    assert set(res["summary"]) == {"gcc", "gc_update"}
    # BN statistics are state, not params: mean and var of 4 + 2 * 4 + 3 * 8
    # + 3 * 16 features (stem, two BNs per block, shortcut BNs in stages 2, 3).
    assert res["model"]["batch_stats"] == 168
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 2 * 2  # arms x seeds x epochs
    for r in res["runs"]:
        assert math.isfinite(r["evals"][-1]["train_loss"])
        assert r["evals"][-1]["train_loss"] < r["evals"][0]["train_loss"] + 0.5


def test_resnet_gc_active_and_fan_in_sums_fixed(run_resnet):
    res, text, _ = run_resnet
    kernels = res["kernels"]
    convs = [k for k in kernels if k != "head/kernel"]
    assert "head/kernel" in kernels and len(convs) == 9  # stem, 6 in blocks, 2 1x1
    assert not any("bn" in k or "bias" in k or "scale" in k for k in kernels)
    for arm, targeted in (("gcc", convs), ("gc_update", kernels)):
        check = res["summary"][arm]["gc_active"]
        assert check["active"] == "yes", arm
        assert check["measured"] == "the applied update"
        assert check["targeted_kernels"] == targeted
        assert check["gc_max"] < 1e-5 and check["baseline_max"] > 1e-2
        # Coupled decay is centralized with the gradient (GC(g + wd * w)),
        # so SGD's steps keep every targeted unit's fan-in weight sum.
        sums = check["fan_in_sum"]
        assert sums["gc_max"] < 1e-5, arm
        assert sums["baseline_min"] > 1e-3, arm
    # GCC leaves the Dense head alone: its steps and sums move.
    gcc = res["summary"]["gcc"]["gc_active"]
    assert gcc["per_kernel"]["gc"]["applied"]["head/kernel"] > 1e-2
    assert gcc["fan_in_sum"]["per_kernel"]["gc"]["head/kernel"] > 1e-3
    assert text.count("GC active: yes") == 2


def test_resnet_arms_are_the_recipes(run_resnet):
    res, text, _ = run_resnet
    for arm, s in res["summary"].items():
        assert s["recipe_check"]["max_relative_difference"] <= 1e-9, arm
        assert s["baseline_check"]["max_relative_difference"] <= 1e-9
        assert s["baseline_check"]["recipe"].startswith(
            "optax.chain(add_decayed_weights(0.0005), optax.sgd(schedule"
        )
    # GC on SGD's update is SGD_GC up to rounding (both linear); the
    # baseline is not: the comparison can tell algorithms apart.
    assert res["summary"]["gc_update"]["recipe_check"]["same_as_sgd_gc"] < 1e-12
    cfg = res["config"]
    schedule = train.resnet_schedule(cfg, res["dataset"]["steps_per_epoch"])
    params = train.init_state(0, (8, 8, 1), 10, train.model_spec(cfg))[0]
    kernels = train.diagnostics.gc_axes(params)
    gc_reference = train.resnet_reference("gc", cfg, schedule)[0]
    for arm in ("baseline", "gc"):
        tx = train.resnet_tx(arm, cfg, schedule, kernels)
        difference = train.max_difference(gc_reference, tx, params)
        assert difference > 1e-2 if arm == "baseline" else difference == 0.0, arm
    assert "SGD_GCC vs baseline" in text and "commutes with SGD's momentum" in text


def test_resnet_schedule_warms_up_then_decays_to_zero(run_resnet):
    res, _, _ = run_resnet
    cfg = res["config"]
    steps = res["dataset"]["steps_per_epoch"]  # 8: warmup 0.5 epoch = 4 steps
    schedule = train.resnet_schedule(cfg, steps)
    lrs = [float(schedule(i)) for i in range(2 * steps + 1)]
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(0.1)
    assert lrs[2] == pytest.approx(0.05)
    assert (np.diff(lrs[4:]) < 0).all()
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": "vgg"}, "config.model"),
        ({"model": "resnet", "optimizers": "adam"}, "config.optimizers"),
        ({"model": "resnet", "apply_to": "update"}, "config.apply_to"),
        ({"model": "resnet", "resnet_arms": "gc,lion"}, "config.resnet_arms"),
        ({"model": "resnet", "resnet_blocks": 0}, "config.resnet_blocks"),
        ({"model": "resnet", "resnet_weight_decay": -1.0}, "config.resnet_weight"),
    ],
)
def test_resnet_bad_options_name_the_field(overrides, field, tmp_path):
    config = default.get_config()
    config.update(progress=False, **overrides)
    with pytest.raises(ValueError, match=field):
        train.train_and_evaluate(config, str(tmp_path))
