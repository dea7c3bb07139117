"""What is linen's own in this example: it takes the NNX example's steps.

The training tests, the same for the NNX example, are in
``examples/common/cnn_test.py`` (``pytest examples/common -k linen_cnn``).
"""

import jax
import numpy as np
import optax
from flax import nnx

from examples import datasets
from examples.common import cnn, optim
from examples.linen_cnn import models, train
from examples.nnx_cnn import models as nnx_models
from examples.nnx_cnn import train as nnx_train


def test_same_steps_as_the_nnx_example():
    """From the same parameters and batches, the linen and NNX train steps agree.

    Dropout is off (rate 0): the two frameworks draw their masks differently.
    On CPU the two agree bit for bit; the tolerance leaves room for other
    backends.
    """
    config = cnn.default_config()
    data = datasets.load("digits")
    nnx_model = nnx_models.CNN((8, 8, 1), 10, dropout_rate=0.0, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(nnx_model, optim.create_optimizer(config), wrt=nnx.Param)
    params = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    state = train.TrainState.create(
        apply_fn=models.CNN(num_classes=10, dropout_rate=0.0).apply,
        params=params,
        tx=optim.create_optimizer(config),
        dropout_key=jax.random.key(0),
    )
    nnx_model.train()
    for step in range(3):
        x = data.train_images[step * 32 : (step + 1) * 32]
        y = data.train_labels[step * 32 : (step + 1) * 32]
        nnx_loss, _ = nnx_train.train_step(nnx_model, optimizer, x, y)
        state, loss, _ = train.train_step(state, x, y)
        np.testing.assert_allclose(loss, nnx_loss, rtol=1e-5)
    updated = nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param))
    moved = optax.tree.norm(optax.tree.sub(state.params, params))
    assert moved > 1e-2  # the parameters did move
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        state.params,
        updated,
    )
