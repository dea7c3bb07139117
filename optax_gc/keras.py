"""Gradient Centralization for Keras 3, inside ``model.fit``, on every backend.

``gctf`` and the keras-io example hook ``optimizer.get_gradients``, which
Keras 3 (and TF2's ``model.fit``) never call, so neither applies GC.
:class:`GradientCentralization` wraps a Keras optimizer the way
``keras.optimizers.LossScaleOptimizer`` does and centralizes each gradient
before the inner optimizer sees it, in ``apply`` (the TensorFlow and torch
backends' ``fit``, and ``apply_gradients``) and in ``stateless_apply`` (the
JAX backend's ``fit``)::

    import os
    os.environ["KERAS_BACKEND"] = "jax"  # before keras is first imported
    import keras
    from optax_gc.keras import GradientCentralization

    model.compile(optimizer=GradientCentralization(keras.optimizers.RMSprop(1e-4)),
                  loss="binary_crossentropy")

Keras kernels are channels-last (Dense ``(in, out)``, Conv
``(kh, kw, in, out)``), so the default is the rank rule of
:func:`optax_gc.centralize`: every axis but the last for rank >= 2, nothing
for biases and norm scales, nothing where the fan-in has one entry per unit.
Where that rule is wrong (attention's ``EinsumDense`` kernels, transposed
convolutions, depthwise kernels, embeddings), :func:`fan_in_axes` reads each
variable's axes from the layer that owns it, for ``reduction_axes=``.

The computation uses ``keras.ops`` only, so it runs on every backend.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras
from keras import ops

from ._layouts import fan_in_size, rank_rule_axes
from ._options import check_bool, normalize_axes

__all__ = ["GradientCentralization", "UnknownLayerWarning", "fan_in_axes"]

AxesByPath = Mapping[str, "tuple[int, ...] | None"]


class UnknownLayerWarning(UserWarning):
    """Variables of rank >= 2 whose layer :func:`fan_in_axes` has no rule for.

    Raised once per call, naming them all with their shapes and layer types.

    Example:
      >>> import os, warnings
      >>> os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> import keras
      >>> from optax_gc.keras import UnknownLayerWarning, fan_in_axes
      >>> class Scale(keras.layers.Layer):
      ...     def build(self, shape):
      ...         self.w = self.add_weight(shape=(shape[-1], 3), name="w")
      ...     def call(self, x):
      ...         return x @ self.w
      >>> inputs = keras.Input((4,))
      >>> model = keras.Model(inputs, Scale(name="scale")(inputs))
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     axes = fan_in_axes(model)
      >>> caught[0].category is UnknownLayerWarning, axes
      (True, {'scale/w': None})
    """


def _is_float(variable: Any) -> bool:
    return "float" in str(variable.dtype)


@keras.saving.register_keras_serializable(package="optax_gc")
class GradientCentralization(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer so that it sees centralized gradients.

    Each gradient of a kernel has its mean over the fan-in axes subtracted,
    one mean per output unit, before the inner optimizer uses it: the
    paper's ``X_GC`` with ``X`` the inner optimizer (weight decay configured
    on the inner optimizer is Keras' decoupled decay, applied to the
    variables, outside GC).

    Args:
      optimizer: the Keras 3 optimizer to wrap (it keeps its own state,
        learning rate and schedule; ``iterations`` is its).
      reduction_axes: ``None`` for the rank rule (every axis but the last,
        Keras layout), or a dict from ``variable.path`` to a tuple of axes or
        ``None`` (leave it alone), e.g. from :func:`fan_in_axes`. It must
        cover every trainable variable the optimizer is built with.
      conv_only: only variables of rank > 3 (conv kernels): the paper's GCC.
      name: the optimizer's name.

    Raises:
      TypeError: if ``optimizer`` is not a Keras optimizer, ``conv_only`` is
        not a bool or ``reduction_axes`` is not a dict.
      ValueError: for base-optimizer options given to the wrapper (set them
        on the inner optimizer), and, when built, for a variable that
        ``reduction_axes`` does not cover or whose axes do not fit its shape.

    Example:
      >>> import os
      >>> os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> import keras, numpy as np
      >>> from optax_gc.keras import GradientCentralization
      >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
      >>> model.compile(GradientCentralization(keras.optimizers.SGD(0.1)), "mse")
      >>> sums = np.asarray(model.layers[0].kernel.value).sum(axis=0)
      >>> x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
      >>> _ = model.fit(x, y, epochs=2, verbose=0)
      >>> after = np.asarray(model.layers[0].kernel.value).sum(axis=0)
      >>> bool(np.allclose(after, sums, atol=1e-6))  # fan-in sums: held by GC
      True
    """

    built: bool  # set by keras.optimizers.Optimizer

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer,
        *,
        reduction_axes: AxesByPath | None = None,
        conv_only: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise TypeError(
                "GradientCentralization wraps a Keras 3 optimizer, got "
                f"{type(optimizer).__name__}; e.g. "
                "GradientCentralization(keras.optimizers.RMSprop(1e-4))."
            )
        check_bool("conv_only", conv_only)
        if reduction_axes is not None and not isinstance(reduction_axes, Mapping):
            raise TypeError(
                "reduction_axes must be None or a dict {variable.path: axes or "
                f"None}} (see optax_gc.keras.fan_in_axes), got {reduction_axes!r}."
            )
        # Keras serializes these base options with every optimizer; only their
        # defaults are accepted here: they belong to the inner optimizer.
        defaults = {
            "learning_rate": 0.0,
            "weight_decay": None,
            "clipnorm": None,
            "global_clipnorm": None,
            "clipvalue": None,
            "use_ema": False,
            "ema_momentum": 0.99,
            "ema_overwrite_frequency": None,
            "loss_scale_factor": None,
            "gradient_accumulation_steps": None,
        }
        for key in [k for k in kwargs if k in defaults]:
            if kwargs.pop(key) != defaults[key]:
                raise ValueError(
                    f"GradientCentralization does not take {key}: set it on "
                    "the inner optimizer."
                )
        if kwargs:
            raise ValueError(
                f"GradientCentralization got unknown arguments {sorted(kwargs)}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.reduction_axes = None if reduction_axes is None else dict(reduction_axes)
        self.conv_only = bool(conv_only)
        self._gc_axes: dict[str, tuple[int, ...] | None] = {}

    # --- which axes ---------------------------------------------------------

    def _axes_of(self, variable: Any) -> tuple[int, ...] | None:
        key = variable.path
        if key in self._gc_axes:
            return self._gc_axes[key]
        shape = tuple(variable.shape)
        if not _is_float(variable) or not shape:
            axes = None
        elif self.reduction_axes is None:
            axes = rank_rule_axes(variable, conv_only=self.conv_only)
        else:
            spec = self.reduction_axes[self._entry_for(key, shape)]
            axes = None if spec is None else normalize_axes(spec, shape, repr(key))
            if axes is not None and (
                fan_in_size(shape, axes) == 1 or (self.conv_only and len(shape) <= 3)
            ):
                axes = None
        self._gc_axes[key] = axes
        return axes

    def _entry_for(self, key: str, shape: tuple[int, ...]) -> str:
        """The ``reduction_axes`` key of a variable path.

        The exact path, or else the one key that differs from it only by
        leading path components: Keras names a variable after the model it
        was built in (``sequential/dense/kernel``), and a model loaded with
        ``keras.models.load_model`` may name it ``dense/kernel``.
        """
        assert self.reduction_axes is not None
        if key in self.reduction_axes:
            return key
        near = [
            k
            for k in self.reduction_axes
            if k.endswith("/" + key) or key.endswith("/" + k)
        ]
        if len(near) == 1:
            return near[0]
        found = f" (it could be any of {near})" if near else ""
        raise ValueError(
            f"reduction_axes has no entry for variable {key!r} of shape "
            f"{shape}{found}. Give every trainable variable its axes or None "
            "(optax_gc.keras.fan_in_axes(model) covers them all)."
        )

    def centralize(self, grads: Sequence[Any], variables: Sequence[Any]) -> list:
        """The gradients, each centralized over its variable's fan-in axes."""
        out: list[Any] = []
        for g, v in zip(grads, variables, strict=True):
            if g is None:
                out.append(g)
                continue
            g = ops.convert_to_tensor(g)  # NumPy gradients work too
            axes = self._axes_of(v)
            if axes is None:
                out.append(g)
                continue
            dtype = str(g.dtype)
            # Half-precision means are taken in float32, as centralize() does.
            acc = ops.cast(g, "float32") if dtype in ("float16", "bfloat16") else g
            centred = acc - ops.mean(acc, axis=axes, keepdims=True)
            out.append(ops.cast(centred, dtype) if acc is not g else centred)
        return out

    # --- the Optimizer protocol, delegated ----------------------------------

    def build(self, var_list: Sequence[Any]) -> None:
        """Builds the inner optimizer and checks every variable's axes."""
        self.inner_optimizer.build(var_list)
        for v in var_list:
            self._axes_of(v)
        super().build(var_list)

    @property
    def variables(self) -> list:
        """This wrapper's variables (none but its counter), then the inner's."""
        return self._variables + self.inner_optimizer.variables

    def stateless_apply(
        self,
        optimizer_variables: Sequence[Any],
        grads: Sequence[Any],
        trainable_variables: Sequence[Any],
    ) -> tuple[list, list]:
        """The JAX backend's ``fit`` path: centralize, then the inner step."""
        if not self.built:
            raise ValueError(
                "To call stateless_apply, GradientCentralization must be built: "
                "call optimizer.build(trainable_variables) first."
            )
        # Values, not Variables: a LossScaleOptimizer around this one passes
        # Keras Variables read through its StatelessScope.
        own = [
            v.value if isinstance(v, keras.Variable) else v
            for v in optimizer_variables[: len(self._variables)]
        ]
        inner = optimizer_variables[len(self._variables) :]
        grads = self.centralize(grads, self._trainable_variables)
        new_vars, new_inner = self.inner_optimizer.stateless_apply(
            inner, grads, trainable_variables
        )
        return new_vars, own + list(new_inner)

    def apply(
        self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None
    ) -> None:
        """The TensorFlow/torch ``fit`` path and ``apply_gradients``."""
        if not self.built:
            if trainable_variables is None:
                raise ValueError(
                    "GradientCentralization.apply needs trainable_variables "
                    "the first time (to build)."
                )
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        variables = (
            self._trainable_variables
            if trainable_variables is None
            else trainable_variables
        )
        self.inner_optimizer.apply(
            self.centralize(list(grads), list(variables)), trainable_variables
        )

    @property
    def learning_rate(self) -> Any:
        """The inner optimizer's learning rate."""
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self) -> Any:
        """The inner optimizer's step count."""
        return self.inner_optimizer.iterations

    def scale_loss(self, loss: Any) -> Any:
        """As the inner optimizer scales it."""
        return self.inner_optimizer.scale_loss(loss)

    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        """As the inner optimizer does (EMA weights, for example)."""
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self) -> dict[str, Any]:
        """The inner optimizer's serialized config and the GC options."""
        return {
            "name": self.name,
            "optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "reduction_axes": (
                None
                if self.reduction_axes is None
                else {
                    k: None if a is None else list(a)
                    for k, a in self.reduction_axes.items()
                }
            ),
            "conv_only": self.conv_only,
        }

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: Any = None
    ) -> GradientCentralization:
        """Rebuilds the wrapper and its inner optimizer."""
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("optimizer"), custom_objects=custom_objects
        )
        axes = config.pop("reduction_axes", None)
        if axes is not None:
            axes = {k: None if a is None else tuple(a) for k, a in axes.items()}
        return cls(inner, reduction_axes=axes, **config)


# --- fan_in_axes ---------------------------------------------------------------


def _einsum_kernel_axes(equation: str, ndim: int) -> tuple[int, ...] | None:
    """The kernel's contracted axes in ``"lhs,kernel->out"``."""
    operands, _, output = equation.replace(" ", "").partition("->")
    kernel = operands.split(",")[1]
    if "..." in kernel or len(kernel) != ndim:
        return None  # cannot say: treated as unknown by the caller
    return tuple(i for i, c in enumerate(kernel) if c not in output) or None


def _layer_rules(layer: Any, shape: tuple[int, ...], name: str) -> Any:
    """(known, axes) for variable ``name`` of ``layer``; known=False: no rule."""
    layers = keras.layers
    if name in ("bias", "gamma", "beta", "moving_mean", "moving_variance", "scale"):
        return True, None
    if isinstance(layer, (layers.Embedding,)):
        return True, None
    norms = tuple(
        getattr(layers, n)
        for n in (
            "BatchNormalization",
            "LayerNormalization",
            "GroupNormalization",
            "UnitNormalization",
            "RMSNormalization",
        )
        if hasattr(layers, n)
    )
    if norms and isinstance(layer, norms):
        return True, None
    ndim = len(shape)
    if isinstance(layer, layers.EinsumDense) and name == "kernel":
        axes = _einsum_kernel_axes(layer.equation, ndim)
        return axes is not None, axes
    if isinstance(layer, layers.Dense) and name == "kernel":
        return True, (0,)
    separable = tuple(
        getattr(layers, n)
        for n in ("SeparableConv1D", "SeparableConv2D")
        if hasattr(layers, n)
    )
    if separable and isinstance(layer, separable):
        if name == "depthwise_kernel":  # (*k, in, multiplier): per channel
            return True, tuple(range(ndim - 2))
        if name == "pointwise_kernel":  # (*1, in * m, out)
            return True, tuple(range(ndim - 1))
    depthwise = tuple(
        getattr(layers, n)
        for n in ("DepthwiseConv1D", "DepthwiseConv2D")
        if hasattr(layers, n)
    )
    if depthwise and isinstance(layer, depthwise) and name == "kernel":
        return True, tuple(range(ndim - 2))  # (*k, in, multiplier)
    transposed = tuple(
        getattr(layers, n)
        for n in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
        if hasattr(layers, n)
    )
    if transposed and isinstance(layer, transposed) and name == "kernel":
        # (*k, out, in): the output axis is second to last.
        return True, (*range(ndim - 2), ndim - 1)
    convs = tuple(
        getattr(layers, n) for n in ("Conv1D", "Conv2D", "Conv3D") if hasattr(layers, n)
    )
    if convs and isinstance(layer, convs) and name == "kernel":
        return True, tuple(range(ndim - 1))
    return False, None


def _owner(model: Any) -> dict[int, Any]:
    """The innermost layer that holds each variable (by ``id``)."""
    owner: dict[int, Any] = {}
    layers = [model, *model._flatten_layers(include_self=False, recursive=True)]
    # Outer layers first, so that inner layers overwrite: the innermost wins.
    for layer in layers:
        for v in layer.weights:
            owner[id(v)] = layer
    return owner


def fan_in_axes(model: Any) -> dict[str, tuple[int, ...] | None]:
    """The fan-in axes of every trainable variable of a built Keras model.

    From the layer that owns each variable: ``Dense`` ``(0,)``;
    ``EinsumDense`` its contracted kernel axes (``MultiHeadAttention``
    query/key/value ``(in, heads, dim)`` -> ``(0,)``, output
    ``(heads, dim, out)`` -> ``(0, 1)``); ``Conv1D/2D/3D`` every axis but the
    last; ``Conv*Transpose`` ``(*k, out, in)`` every axis but the second to
    last (the rank rule is wrong there); ``DepthwiseConv*`` the spatial axes
    (one unit per channel and multiplier); ``SeparableConv*`` depthwise the
    spatial axes, pointwise every axis but the last; ``Embedding``, every
    normalization layer and all biases ``None``. A fan-in of one entry per
    unit is ``None`` too. Variables of rank >= 2 of other layers get
    ``None``, and one :class:`UnknownLayerWarning` names them.

    Args:
      model: a built Keras model (or layer).

    Returns:
      ``{variable.path: axes or None}`` for every trainable variable, for
      ``GradientCentralization(..., reduction_axes=...)``.

    Example:
      >>> import os
      >>> os.environ.setdefault("KERAS_BACKEND", "jax")
      'jax'
      >>> import keras
      >>> from optax_gc.keras import fan_in_axes
      >>> inputs = keras.Input((5, 8))
      >>> x = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
      >>> model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
      >>> axes = fan_in_axes(model)
      >>> axes["mha/query/kernel"], axes["mha/attention_output/kernel"]
      ((0,), (0, 1))
      >>> axes["mha/query/bias"], axes["head/kernel"]
      (None, (0,))
    """
    owner = _owner(model)
    out: dict[str, tuple[int, ...] | None] = {}
    missed = []
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        layer = owner.get(id(v))
        name = re.split(r"[/:]", v.path)[-1]
        known, axes = (
            _layer_rules(layer, shape, name) if layer is not None else (False, None)
        )
        if axes is not None and fan_in_size(shape, axes) == 1:
            axes = None
        if not known and len(shape) >= 2 and _is_float(v):
            missed.append(f"{v.path} {shape} in {type(layer).__name__}")
        out[v.path] = axes if known else None
    if missed:
        warnings.warn(
            f"fan_in_axes knows no layer rule for {len(missed)} variable(s) of "
            f"rank >= 2 and left them alone (None): {'; '.join(missed)}. Edit "
            "the returned dict to give their fan-in axes.",
            UnknownLayerWarning,
            stacklevel=2,
        )
    return out
