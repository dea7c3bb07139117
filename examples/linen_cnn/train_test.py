"""The linen example really trains, and GC really runs inside it (tiny settings)."""

import json

import pytest

from examples.linen_cnn import train
from examples.linen_cnn.configs import default


def tiny_config(**overrides):
    """The default config cut to a few hundred digits."""
    config = default.get_config()
    config.train_limit = 320
    config.batch_size = 32
    config.num_epochs = 3
    config.update(overrides)
    return config


def test_trains_and_writes_metrics(tmp_path):
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
    assert set(changes) == {"conv1", "conv2", "conv3", "dense1", "dense2"}
    assert max(changes.values()) < 2e-5  # float32 rounding over 30 steps


def test_without_gc_fan_in_sums_move(tmp_path):
    """The same loop without GC (plain SGD) moves every kernel's fan-in sums."""
    config = tiny_config(num_epochs=1, momentum=0.0, gc=False)
    changes = train.train_and_evaluate(config, str(tmp_path))["fan_in_sum_change"]
    assert min(changes.values()) > 1e-3


def test_conv_only_with_plain_sgd(tmp_path):
    """GC on the conv kernels only: their fan-in sums stay, the Dense ones move."""
    config = tiny_config(num_epochs=1, momentum=0.0, conv_only=True)
    changes = train.train_and_evaluate(config, str(tmp_path))["fan_in_sum_change"]
    assert max(changes[k] for k in ("conv1", "conv2", "conv3")) < 2e-5
    assert min(changes[k] for k in ("dense1", "dense2")) > 1e-3


def test_rmsprop(tmp_path):
    """RMSprop trains, and moves the fan-in sums even with GC.

    It rescales each entry after GC, as ``fan_in_sum_change``'s docs say.
    """
    config = tiny_config(optimizer="rmsprop", learning_rate=1e-3, num_epochs=1)
    result = train.train_and_evaluate(config, str(tmp_path))
    assert result["test_loss"] < 2.3  # below log(10), the loss at chance
    assert max(result["fan_in_sum_change"].values()) > 1e-3


def test_optimizer_names_and_errors(tmp_path):
    for name in ("sgd", "rmsprop", "adam"):
        train.create_optimizer(tiny_config(optimizer=name))
    with pytest.raises(ValueError, match=r"config.optimizer is 'lamb'"):
        train.create_optimizer(tiny_config(optimizer="lamb"))
    with pytest.raises(ValueError, match=r"batch_size 500 exceeds the 320"):
        train.train_and_evaluate(tiny_config(batch_size=500), str(tmp_path))


def test_same_steps_as_the_nnx_example():
    """From the same parameters and batches, the linen and NNX train steps agree.

    Dropout is off (rate 0): the two frameworks draw their masks differently.
    On CPU the two agree bit for bit; the tolerance leaves room for other
    backends.
    """
    import jax
    import numpy as np
    import optax
    from flax import nnx
    from flax.training import train_state

    from examples import datasets
    from examples.linen_cnn import models
    from examples.nnx_cnn import models as nnx_models
    from examples.nnx_cnn import train as nnx_train

    config = tiny_config(dropout_rate=0.0)
    data = datasets.load("digits")
    nnx_model = nnx_models.CNN((8, 8, 1), 10, dropout_rate=0.0, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(
        nnx_model, nnx_train.create_optimizer(config), wrt=nnx.Param
    )
    params = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    state = train_state.TrainState.create(
        apply_fn=models.CNN(num_classes=10, dropout_rate=0.0).apply,
        params=params,
        tx=train.create_optimizer(config),
    )
    nnx_model.train()
    for step in range(3):
        x = data.train_images[step * 32 : (step + 1) * 32]
        y = data.train_labels[step * 32 : (step + 1) * 32]
        nnx_loss, _ = nnx_train.train_step(nnx_model, optimizer, x, y)
        state, loss, _ = train.train_step(state, x, y, jax.random.key(0))
        np.testing.assert_allclose(loss, nnx_loss, rtol=1e-5)
    updated = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    moved = optax.tree.norm(optax.tree.sub(state.params, params))
    assert moved > 1e-2  # the parameters did move
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        state.params,
        updated,
    )
