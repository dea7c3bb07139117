"""What is NNX's own in this example: the dropout switch of the eval step.

The training tests, the same for the linen example, are in
``examples/common/cnn_test.py`` (``pytest examples/common -k nnx_cnn``).
"""

import numpy as np
from flax import nnx

from examples import datasets
from examples.nnx_cnn import models, train


def test_eval_step_turns_dropout_off_and_leaves_the_model_training():
    data = datasets.load("digits")
    x, y = data.test_images[:64], data.test_labels[:64]
    model = models.CNN((8, 8, 1), 10, dropout_rate=0.5, rngs=nnx.Rngs(0))
    w = np.ones(len(y), np.float32)
    first = train.eval_step(model, x, y, w)
    np.testing.assert_array_equal(first, train.eval_step(model, x, y, w))
    # The model itself still trains with dropout: two calls draw two masks.
    assert not np.array_equal(model(x), model(x))
