"""optax_gc.keras: GC that really runs inside Keras 3's ``model.fit``.

The JAX backend (``KERAS_BACKEND=jax``, set here before Keras is imported;
another backend chosen in the environment is respected). What gctf and the
keras-io example fail: with SGD, every centralized kernel's per-unit fan-in
sums stay where they started inside ``fit``, while a baseline's move.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optax_gc  # noqa: E402
from optax_gc.keras import (  # noqa: E402
    GradientCentralization,
    UnknownLayerWarning,
    fan_in_axes,
)

pytestmark = pytest.mark.keras  # see conftest.py


def _np(x):
    """A NumPy copy of a variable or tensor, on any backend."""
    return keras.ops.convert_to_numpy(x)


def _cnn(seed: int = 0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="head")(x)
    return keras.Model(inputs, outputs)


def _data(n: int = 64):
    rng = np.random.default_rng(0)
    x = rng.random((n, 8, 8, 1), dtype=np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0.5).astype("float32")[:, None]
    return x, y


def _fan_in_sums(model):
    return {
        name: _np(model.get_layer(name).kernel.value).sum(axis=axes)
        for name, axes in (("conv", (0, 1, 2)), ("dense", (0,)), ("head", (0,)))
    }


@pytest.mark.parametrize("gc", [True, False])
def test_fit_holds_fan_in_sums_with_gc_and_moves_them_without(gc):
    model = _cnn()
    sgd = keras.optimizers.SGD(0.5, momentum=0.9)
    model.compile(GradientCentralization(sgd) if gc else sgd, "binary_crossentropy")
    before = _fan_in_sums(model)
    kernel0 = _np(model.get_layer("dense").kernel.value).copy()
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    after = _fan_in_sums(model)
    moved = max(np.abs(after[k] - before[k]).max() for k in before)
    if gc:
        assert moved < 1e-5, moved
        # ... while the weights themselves trained.
        change = np.abs(_np(model.get_layer("dense").kernel.value) - kernel0).max()
        assert change > 1e-3
    else:
        assert moved > 1e-3, moved


def test_steps_equal_optax_centralize_then_sgd_momentum():
    """apply() and stateless_apply() (the JAX fit path; Keras has none on
    TensorFlow), step for step, equal
    optax.chain(optax_gc.centralize(), optax.sgd(lr, momentum)) on the same
    gradients: Keras kernels have the Flax layout."""
    model = _cnn()
    variables = model.trainable_variables
    params = [_np(v.value).copy() for v in variables]
    rng = np.random.default_rng(1)
    grads = [
        [rng.normal(size=p.shape).astype("float32") for p in params] for _ in range(4)
    ]

    tx = optax.chain(optax_gc.centralize(), optax.sgd(0.1, momentum=0.9))
    ref = [jnp.asarray(p) for p in params]
    state = tx.init(ref)
    for g in grads:
        u, state = tx.update([jnp.asarray(x) for x in g], state, ref)
        ref = optax.apply_updates(ref, u)

    stateful = GradientCentralization(keras.optimizers.SGD(0.1, momentum=0.9))
    for g in grads:
        stateful.apply(g, variables)
    for v, r in zip(variables, ref, strict=True):
        np.testing.assert_allclose(_np(v.value), r, rtol=1e-5, atol=1e-6)

    if keras.backend.backend() == "tensorflow":
        return  # Keras has no stateless_apply on TensorFlow (tf.distribute)
    for v, p in zip(variables, params, strict=True):
        v.assign(p)
    stateless = GradientCentralization(keras.optimizers.SGD(0.1, momentum=0.9))
    stateless.build(variables)
    values, opt_values = (
        [v.value for v in variables],
        [v.value for v in stateless.variables],
    )
    for g in grads:
        values, opt_values = stateless.stateless_apply(opt_values, g, values)
    for got, r in zip(values, ref, strict=True):
        np.testing.assert_allclose(_np(got), r, rtol=1e-5, atol=1e-6)


def _every_layer_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2d")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(
        x
    )
    x = keras.layers.SeparableConv2D(
        5, 3, depth_multiplier=2, padding="same", name="sep"
    )(x)
    x = keras.layers.Conv2DTranspose(6, 3, padding="same", name="convt")(x)
    x = keras.layers.Reshape((64, 6))(x)
    x = keras.layers.Conv1D(8, 3, padding="same", name="conv1d")(x)
    x = keras.layers.LayerNormalization(name="ln")(x)
    x = keras.layers.MultiHeadAttention(2, 4, name="mha")(x, x)
    x = keras.layers.EinsumDense(
        "btd,de->bte", output_shape=(64, 7), bias_axes="e", name="ein"
    )(x)
    x = keras.layers.Dense(5, name="dense")(x)
    image = keras.layers.Flatten()(x)
    tokens = keras.Input((4,), dtype="int32")
    e = keras.layers.Embedding(10, 3, name="embed")(tokens)
    v = keras.layers.Reshape((2, 2, 2, 3))(
        keras.layers.Dense(24, name="to_volume")(keras.layers.Flatten()(e))
    )
    v = keras.layers.Conv3D(2, 2, name="conv3d")(v)
    merged = keras.layers.Concatenate()([image, keras.layers.Flatten()(v)])
    out = keras.layers.Dense(1, name="head")(merged)
    return keras.Model([inputs, tokens], out)


def test_fan_in_axes_of_every_layer():
    model = _every_layer_model()
    axes = fan_in_axes(model)
    shapes = {v.path: tuple(v.shape) for v in model.trainable_variables}
    assert set(axes) == set(shapes)
    expected = {
        "conv2d/kernel": (0, 1, 2),  # (3, 3, 3, 4)
        "dw/kernel": (0, 1),  # (3, 3, 4, 2): per channel and multiplier
        "sep/depthwise_kernel": (0, 1),
        "sep/pointwise_kernel": (0, 1, 2),  # (1, 1, 8, 5)
        "convt/kernel": (0, 1, 3),  # (3, 3, out=6, in=5): the rank rule is wrong
        "conv1d/kernel": (0, 1),
        "mha/query/kernel": (0,),  # (in, heads, dim)
        "mha/key/kernel": (0,),
        "mha/value/kernel": (0,),
        "mha/attention_output/kernel": (0, 1),  # (heads, dim, out)
        "ein/kernel": (0,),
        "dense/kernel": (0,),
        "conv3d/kernel": (0, 1, 2, 3),
        "head/kernel": (0,),
        "embed/embeddings": None,
    }
    assert shapes["convt/kernel"] == (3, 3, 6, 5)
    assert shapes["mha/query/kernel"] == (8, 2, 4)
    for path, want in expected.items():
        assert axes[path] == want, (path, shapes[path], axes[path])
    for path, a in axes.items():
        name = path.rsplit("/", 1)[-1]
        if name in ("bias", "gamma", "beta") or path.startswith(("bn/", "ln/")):
            assert a is None, path
    # GC with these axes: every listed kernel's gradient has zero fan-in means.
    opt = GradientCentralization(keras.optimizers.SGD(1.0), reduction_axes=axes)
    opt.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    grads = [
        rng.normal(size=v.shape).astype("float32") for v in model.trainable_variables
    ]
    out = opt.centralize(grads, model.trainable_variables)
    for v, g, o in zip(model.trainable_variables, grads, out, strict=True):
        a = axes[v.path]
        if a is None:
            np.testing.assert_array_equal(_np(o), g)
        else:
            np.testing.assert_allclose(_np(o).mean(axis=a), 0.0, atol=1e-6)


def test_fan_in_axes_warns_for_unknown_layers():
    class Scale(keras.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 3), name="w")

        def call(self, x):
            return x @ self.w

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Scale(name="scale")(inputs))
    with pytest.warns(UnknownLayerWarning, match=r"scale/w \(4, 3\) in Scale"):
        axes = fan_in_axes(model)
    assert axes == {"scale/w": None}


def test_save_load_resume_continues_exactly():
    x, y = _data()

    def fit(model, epochs):
        model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, shuffle=False)

    straight = _cnn()
    straight.compile(
        GradientCentralization(keras.optimizers.Adam(1e-2)), "binary_crossentropy"
    )
    fit(straight, 3)

    first = _cnn()
    first.compile(
        GradientCentralization(keras.optimizers.Adam(1e-2)), "binary_crossentropy"
    )
    fit(first, 2)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"gc-{os.getpid()}.keras")
    try:
        first.save(path)
        resumed = keras.models.load_model(path)
    finally:
        os.remove(path)
    assert isinstance(resumed.optimizer, GradientCentralization)
    assert isinstance(resumed.optimizer.inner_optimizer, keras.optimizers.Adam)
    assert int(resumed.optimizer.iterations.numpy()) == 8
    fit(resumed, 1)
    for a, b in zip(straight.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(_np(a.value), _np(b.value), rtol=1e-6, atol=1e-7)


def test_config_round_trip_keeps_the_options():
    opt = GradientCentralization(
        keras.optimizers.RMSprop(1e-4),
        reduction_axes={"k": (0,), "b": None},
        conv_only=True,
    )
    back = GradientCentralization.from_config(opt.get_config())
    assert back.reduction_axes == {"k": (0,), "b": None} and back.conv_only
    assert isinstance(back.inner_optimizer, keras.optimizers.RMSprop)
    np.testing.assert_allclose(float(back.learning_rate), 1e-4, rtol=1e-6)


def test_mixed_bfloat16_keeps_variable_dtypes():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _cnn()
        model.compile(
            GradientCentralization(keras.optimizers.SGD(0.1)), "binary_crossentropy"
        )
        dtypes = {v.path: v.dtype for v in model.weights}
        before = _fan_in_sums(model)
        x, y = _data()
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
        assert {v.path: v.dtype for v in model.weights} == dtypes
        assert all("float32" in str(d) for d in dtypes.values())
        after = _fan_in_sums(model)
        assert max(np.abs(after[k] - before[k]).max() for k in before) < 1e-4
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_conv_only_and_fan_in_of_one():
    model = _cnn()
    opt = GradientCentralization(keras.optimizers.SGD(1.0), conv_only=True)
    opt.build(model.trainable_variables)
    assert [v.path for v in model.trainable_variables if opt._axes_of(v)] == [
        "conv/kernel"
    ]
    inputs = keras.Input((1,))
    one = keras.Model(inputs, keras.layers.Dense(3, name="one")(inputs))
    opt = GradientCentralization(keras.optimizers.SGD(1.0))
    opt.build(one.trainable_variables)
    assert opt._axes_of(one.get_layer("one").kernel) is None  # GC would zero it


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match="wraps a Keras 3 optimizer"):
        GradientCentralization(optax.sgd(0.1))
    with pytest.raises(TypeError, match="conv_only must be True or False"):
        GradientCentralization(keras.optimizers.SGD(0.1), conv_only="yes")
    with pytest.raises(ValueError, match="does not take clipnorm: set it on the inner"):
        GradientCentralization(keras.optimizers.SGD(0.1), clipnorm=1.0)
    model = _cnn()
    opt = GradientCentralization(
        keras.optimizers.SGD(0.1), reduction_axes={"conv/kernel": (0, 1, 2)}
    )
    with pytest.raises(
        ValueError, match=r"no entry for variable 'conv/bias' of shape \(4,\)"
    ):
        opt.build(model.trainable_variables)
    opt = GradientCentralization(
        keras.optimizers.SGD(0.1),
        reduction_axes={
            **dict.fromkeys(v.path for v in model.trainable_variables),
            "head/kernel": (3,),
        },
    )
    with pytest.raises(
        ValueError, match=r"out of range for leaf 'head/kernel' of shape \(16, 1\)"
    ):
        opt.build(model.trainable_variables)


def test_inside_a_loss_scale_optimizer_with_mixed_float16():
    """mixed_float16 makes compile wrap the optimizer in a LossScaleOptimizer,
    whose stateless_apply hands its inner optimizer Keras Variables."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = _data()
        for wrap in (
            GradientCentralization(keras.optimizers.SGD(0.1)),
            keras.optimizers.LossScaleOptimizer(
                GradientCentralization(keras.optimizers.SGD(0.1))
            ),
        ):
            model = _cnn()
            model.compile(wrap, "binary_crossentropy")
            before = _fan_in_sums(model)
            model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
            after = _fan_in_sums(model)
            assert max(np.abs(after[k] - before[k]).max() for k in before) < 1e-3
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_reduction_axes_survive_save_and_load():
    """A loaded model names its variables without the outer model's prefix
    (sequential/dense/kernel -> dense/kernel): the saved axes still apply."""
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5), keras.layers.Dense(1)]
    )
    axes = fan_in_axes(model)
    model.compile(
        GradientCentralization(keras.optimizers.SGD(0.1), reduction_axes=axes), "mse"
    )
    x = np.random.default_rng(0).random((16, 6), dtype=np.float32)
    y = x.sum(axis=1, keepdims=True)
    model.fit(x, y, epochs=1, verbose=0)
    path = os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"gc-axes-{os.getpid()}.keras"
    )
    try:
        model.save(path)
        loaded = keras.models.load_model(path)
    finally:
        os.remove(path)
    kernel = loaded.layers[0].kernel
    sums = _np(kernel.value).sum(axis=0)
    loaded.fit(x, y, epochs=2, verbose=0)
    np.testing.assert_allclose(_np(kernel.value).sum(axis=0), sums, atol=1e-5)
