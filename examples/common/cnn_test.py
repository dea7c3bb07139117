"""Both CNN examples really train, and GC really runs inside them (tiny settings).

One test each, parametrised over the NNX and the linen example: they share
the loop (``cnn.py``) and differ only in the framework part of ``train.py``.
"""

import json

import pytest

from examples.common import cnn
from examples.linen_cnn import train as linen_train
from examples.nnx_cnn import train as nnx_train

EXAMPLES = pytest.mark.parametrize(
    "train", [nnx_train, linen_train], ids=["nnx_cnn", "linen_cnn"]
)
KERNELS = {f"conv{i}/kernel" for i in (1, 2, 3)} | {"dense1/kernel", "dense2/kernel"}


def tiny_config(**overrides):
    """The default config cut to a few hundred digits."""
    config = cnn.default_config()
    config.train_limit = 320
    config.batch_size = 32
    config.num_epochs = 3
    config.update(overrides)
    return config


@EXAMPLES
def test_trains_and_writes_metrics(train, tmp_path):
    """Default optimizer (SGD, momentum 0.9, GC on) with dropout: it learns."""
    result = train.train_and_evaluate(tiny_config(), str(tmp_path))
    history = result["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    # 10 classes: chance is 0.1. These 30 steps reach about 0.65.
    assert result["test_accuracy"] > 0.4
    assert result["num_train"] == 320
    assert result["num_test"] == 359  # the whole digits test split
    assert result["source"] == "scikit-learn load_digits"
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test_accuracy"] == result["test_accuracy"]
    assert saved["config"]["gc"] is True
    # GC before SGD with momentum: each update is a sum of centralized
    # gradients, so no output unit's fan-in weight sum moves.
    changes = result["fan_in_sum_change"]
    assert set(changes) == set(result["gc_kernels"]) == KERNELS
    assert max(changes.values()) < 2e-5  # float32 rounding over 30 steps


@EXAMPLES
def test_without_gc_fan_in_sums_move(train, tmp_path):
    """The same loop without GC (plain SGD) moves every kernel's fan-in sums."""
    config = tiny_config(num_epochs=1, momentum=0.0, gc=False)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["gc_kernels"] == []
    assert min(result["fan_in_sum_change"].values()) > 1e-3


@EXAMPLES
def test_conv_only_with_plain_sgd(train, tmp_path):
    """GC on the conv kernels only: their fan-in sums stay, the Dense ones move."""
    config = tiny_config(num_epochs=1, momentum=0.0, conv_only=True)
    result = train.train_and_evaluate(config, str(tmp_path))
    changes = result["fan_in_sum_change"]
    assert result["gc_kernels"] == ["conv1/kernel", "conv2/kernel", "conv3/kernel"]
    assert max(changes[k] for k in result["gc_kernels"]) < 2e-5
    assert min(changes[k] for k in ("dense1/kernel", "dense2/kernel")) > 1e-3


@EXAMPLES
@pytest.mark.standard_promotion  # optax.rmsprop's arithmetic
def test_rmsprop(train, tmp_path):
    """RMSprop trains, and moves the fan-in sums even with GC.

    It rescales each entry after GC, so the step is not centred.
    """
    config = tiny_config(optimizer="rmsprop", learning_rate=1e-3, num_epochs=1)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["test_loss"] < 2.3  # below log(10), the loss at chance
    assert max(result["fan_in_sum_change"].values()) > 1e-3


@EXAMPLES
def test_errors_name_the_field(train, tmp_path):
    with pytest.raises(ValueError, match=r"config.optimizer is 'lamb'"):
        train.train_and_evaluate(tiny_config(optimizer="lamb"), str(tmp_path))
    with pytest.raises(ValueError, match=r"batch_size 500 exceeds the 320"):
        train.train_and_evaluate(tiny_config(batch_size=500), str(tmp_path))
