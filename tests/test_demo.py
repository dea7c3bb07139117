"""The demo trains for real on tiny settings and proves GC was active."""

import contextlib
import importlib.util
import io
import math
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("optax_gc_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = demo.main(["--seeds", "2", "--epochs", "1"])
    return res, out.getvalue()


def test_accuracies_finite_and_well_above_chance(run):
    res, _ = run
    for arm in ("gc", "baseline"):
        assert res[arm]["test_acc"].shape == (2,)
        for acc, loss in zip(res[arm]["test_acc"], res[arm]["loss"], strict=True):
            # Chance: loss ln(10) = 2.3, accuracy 0.1. One epoch reaches
            # losses of 0.4-1.2 and accuracies of 0.75-0.87 over seeds 0-4.
            assert math.isfinite(loss) and loss < 2.0
            assert 0.5 < acc <= 1.0
    assert res["diff"] == pytest.approx(
        res["gc"]["test_acc"] - res["baseline"]["test_acc"]
    )


def test_gc_updates_have_zero_fan_in_mean_and_baseline_not(run):
    res, _ = run
    gc = res["gc"]["update_fan_in_mean"]
    base = res["baseline"]["update_fan_in_mean"]
    kernels = {"conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"}
    assert set(gc) == set(base) == kernels
    for k in gc:
        assert gc[k] < 1e-7, k
        assert base[k] > 1e-4, k


def test_fan_in_sums_fixed_under_plain_sgd_while_weights_move(run):
    plane = run[0]["hyperplane"]
    assert plane["gc_sum_change"] < 1e-5
    assert plane["gc_weight_change"] > 1e-3
    assert plane["baseline_sum_change"] > 1e-2


def test_optax_centralize_averages_the_wrong_axis_of_a_flax_kernel(run):
    wrong = run[0]["wrong_axis"]
    assert wrong["optax_col_mean"] > 1e-4  # output units keep a mean gradient
    assert wrong["optax_row_mean"] < 1e-7  # it centred the inputs instead
    assert wrong["gc_col_mean"] < 1e-7


def test_prints_table_and_honest_caveat(run):
    _, text = run
    assert "test accuracy" in text
    assert "no significance test" in text
    assert "optax.centralize()" in text
