"""The paper's GC optimizers, as plain chains of optax pieces.

Each recipe takes its optax namesake's hyperparameters and puts
:func:`optax_gc.centralize` where the authors' reference optimizers put GC,
relative to weight decay and to the optimizer's own statistics. Every recipe
is built by :func:`_recipe` from four lists, so the order is stated once:

* ``apply_to="gradient"`` (the paper's ``X_GC``)::

      coupled decay -> GC -> statistics -> decoupled decay -> learning rate

* ``apply_to="update"`` (the authors' ``Adam_GC2``/``AdamW_GC2``, Ranger's
  ``gc_loc=False``)::

      coupled decay -> statistics -> decoupled decay -> GC -> learning rate

"Coupled" decay is PyTorch's ``weight_decay`` (L2 added to the gradient:
``SGD_GC``, ``Adam_GC``, ``Adagrad_GC``); "decoupled" is AdamW's
(``SGDW_GC``, ``AdamW_GC``). With GC on the update, decoupled decay is
inside the centralized step, as in ``AdamW_GC2``. GC is always applied
before the learning rate so that schedules and ``inject_hyperparams`` see
the same step optax would produce.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import jax
import optax

from ._centralize import centralize
from ._layouts import Layout, ReductionAxes

ApplyTo = Literal["gradient", "update"]
_DecayKind = Literal["coupled", "decoupled"]

_APPLY_TO: tuple[str, ...] = get_args(ApplyTo)


def _check_apply_to(apply_to: Any) -> None:
    if apply_to not in _APPLY_TO:
        raise ValueError(
            f"apply_to={apply_to!r} is not one of {_APPLY_TO}: 'gradient' "
            "centralizes the incoming gradient (the paper's X_GC), 'update' "
            "the optimizer's step (the authors' Adam_GC2, Ranger's "
            "gc_loc=False)."
        )


def _is_zero(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy number equal to zero.

    Arrays and schedules are never "zero" here: under ``inject_hyperparams``
    the decay arrives as an array and must stay in the chain.
    """
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and (value == 0)
    )


def _recipe(
    learning_rate: optax.ScalarOrSchedule,
    statistics: Sequence[optax.GradientTransformation],
    *,
    weight_decay: optax.ScalarOrSchedule,
    weight_decay_mask: Any,
    decay: _DecayKind,
    apply_to: ApplyTo,
    conv_only: bool,
    layout: Layout,
    reduction_axes: ReductionAxes | None,
    mask: Any,
    after_decay: Sequence[optax.GradientTransformation] = (),
    after_lr: Sequence[optax.GradientTransformation] = (),
) -> optax.GradientTransformationExtraArgs:
    """Chains GC, decay and an optimizer's pieces in the reference order.

    ``after_decay`` follows the decoupled decay (LAMB's trust ratio, which
    scales the decayed step); ``after_lr`` follows the learning rate (optax's
    RMSprop momentum).
    """
    _check_apply_to(apply_to)
    gc = centralize(
        conv_only=conv_only, layout=layout, reduction_axes=reduction_axes, mask=mask
    )
    decayed = (
        []
        if _is_zero(weight_decay)
        else [optax.add_decayed_weights(weight_decay, weight_decay_mask)]
    )
    coupled = decayed if decay == "coupled" else []
    decoupled = decayed if decay == "decoupled" else []
    parts: list[optax.GradientTransformation] = [*coupled]
    if apply_to == "gradient":
        parts += [gc, *statistics, *decoupled, *after_decay]
    else:
        parts += [*statistics, *decoupled, *after_decay, gc]
    parts += [optax.scale_by_learning_rate(learning_rate), *after_lr]
    return optax.chain(*parts)


def _momentum(
    momentum: float | jax.Array | None, nesterov: bool, accumulator_dtype: Any
) -> list[optax.GradientTransformation]:
    """PyTorch-style heavy ball: the buffer starts as the first gradient."""
    if momentum is None:
        return []
    return [
        optax.trace(
            decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype
        )
    ]


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with Gradient Centralization: the authors' ``SGD_GC``.

    ``g' = GC(g + weight_decay * w)``; with ``momentum`` the buffer starts as
    the first ``g'`` and then ``buf = momentum * buf + g'`` (dampening 0, as
    :class:`torch.optim.SGD`), the step is ``buf`` (or ``g' + momentum * buf``
    with ``nesterov``); ``w -= learning_rate * step``. ``conv_only=True`` is
    ``SGD_GCC``, the paper's ImageNet recipe.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.sgd`.
      momentum: heavy-ball momentum, or ``None`` for none.
      nesterov: Nesterov momentum.
      accumulator_dtype: dtype of the momentum buffer (default: the params').
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay, as ``mask`` of
        :func:`optax.add_decayed_weights` (default: all, as PyTorch).
      conv_only: centralize only conv kernels (rank > 3), the paper's GCC.
      apply_to: ``"gradient"`` (the paper) or ``"update"`` (GC on the step).
        Without weight decay the two are equal for SGD: GC is linear.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches, see :func:`optax_gc.centralize` (not the
        decay's mask: that is ``weight_decay_mask``).

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((2, 2))}
      >>> grads = {"kernel": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
      >>> tx = optax_gc.sgd(0.5, momentum=0.9)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["kernel"]  # -0.5 * GC(g): each column sums to zero
      Array([[ 0.5,  1. ],
             [-0.5, -1. ]], dtype=float32)
    """
    return _recipe(
        learning_rate,
        _momentum(momentum, nesterov, accumulator_dtype),
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def sgdw(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with decoupled weight decay and GC: the authors' ``SGDW_GC``.

    GC on the gradient, momentum as :func:`optax_gc.sgd`, then
    ``w -= learning_rate * (buf + weight_decay * w)``: the decay is not
    centralized. With ``apply_to="update"`` the whole step including the
    decay is centralized. Arguments are those of :func:`optax_gc.sgd`;
    ``weight_decay`` is decoupled (default ``1e-4``, as :func:`optax.adamw`).

    Args:
      learning_rate: a scalar or a schedule.
      momentum: heavy-ball momentum, or ``None``.
      nesterov: Nesterov momentum.
      accumulator_dtype: dtype of the momentum buffer.
      weight_decay: decoupled decay rate (multiplied by the learning rate).
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.sgdw(0.1, momentum=0.9, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        _momentum(momentum, nesterov, accumulator_dtype),
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="decoupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def adam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam with GC: the authors' ``Adam_GC``, or ``Adam_GC2`` on the update.

    ``apply_to="gradient"``: the moments see ``GC(g + weight_decay * w)``.
    ``apply_to="update"``: the moments see ``g + weight_decay * w`` and the
    step ``m_hat / (sqrt(v_hat) + eps)`` is centralized, which the authors
    say usually works better for adaptive methods.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adam`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      nesterov: Nesterov momentum (NAdam), as :func:`optax.adam`.
      weight_decay: coupled L2 decay, added to the gradient before GC (use
        :func:`optax_gc.adamw` for decoupled decay).
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` (``Adam_GC``) or ``"update"`` (``Adam_GC2``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> tx = optax_gc.adam(1e-3, apply_to="update")
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # the step is centralized
      >>> bool(jnp.abs(col_sums).max() < 1e-9)
      True
      >>> updates["bias"]  # biases: plain Adam step
      Array([-0.001, -0.001], dtype=float32)
    """
    return _recipe(
        learning_rate,
        [
            optax.scale_by_adam(
                b1=b1,
                b2=b2,
                eps=eps,
                eps_root=eps_root,
                mu_dtype=mu_dtype,
                nesterov=nesterov,
            )
        ],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamW with GC: the authors' ``AdamW_GC``, or ``AdamW_GC2`` on the update.

    ``apply_to="gradient"``: moments of ``GC(g)``, then
    ``w -= lr * (adam_step + weight_decay * w)`` with the decay outside GC.
    ``apply_to="update"``: ``w -= lr * GC(adam_step + weight_decay * w)``.
    Unlike :func:`optax.adamw`, the decay's mask is ``weight_decay_mask``
    (``mask`` is GC's, as in every recipe).

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamw`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      nesterov: Nesterov momentum (NAdamW).
      weight_decay: decoupled decay rate.
      weight_decay_mask: which leaves decay (optax's ``mask`` of adamw).
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` (``AdamW_GC``) or ``"update"`` (``AdamW_GC2``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.adamw(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [
            optax.scale_by_adam(
                b1=b1,
                b2=b2,
                eps=eps,
                eps_root=eps_root,
                mu_dtype=mu_dtype,
                nesterov=nesterov,
            )
        ],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="decoupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def nadam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """NAdam with GC: :func:`optax_gc.adam` with Nesterov momentum.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.nadam`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.nadam(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return adam(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        nesterov=True,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def nadamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """NAdamW with GC: :func:`optax_gc.adamw` with Nesterov momentum.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.nadamw`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      weight_decay: decoupled decay rate.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.nadamw(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return adamw(
        learning_rate,
        b1,
        b2,
        eps,
        eps_root,
        mu_dtype,
        nesterov=True,
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adagrad with GC: the authors' ``Adagrad_GC``.

    The accumulated squares see ``GC(g + weight_decay * w)``. Hyperparameters
    mean what they mean in :func:`optax.adagrad` (``g / sqrt(sum + eps)``,
    the sum starting at ``initial_accumulator_value``), not PyTorch's.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adagrad`.
      initial_accumulator_value: starting value of the sum of squares.
      eps: added inside the square root.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.adagrad(0.1, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [
            optax.scale_by_rss(
                initial_accumulator_value=initial_accumulator_value, eps=eps
            )
        ],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """RMSprop with GC: what ``gctf.optimizers.rmsprop`` means to do.

    The running mean of squares sees ``GC(g + weight_decay * w)``. As in
    :func:`optax.rmsprop`, ``eps`` is inside the square root unless
    ``eps_in_sqrt=False`` (PyTorch's and Keras' placement) and momentum acts
    on the learning-rate-scaled step.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.rmsprop`.
      decay: decay of the running mean of squares.
      eps: the denominator's epsilon.
      initial_scale: starting value of the running mean of squares.
      eps_in_sqrt: put ``eps`` inside the square root (optax's default).
      centered: divide by the running standard deviation instead.
      momentum: momentum on the step, or ``None``.
      nesterov: Nesterov momentum.
      bias_correction: debias the running means.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.rmsprop(1e-4, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    return _recipe(
        learning_rate,
        [
            scale(
                decay=decay,
                eps=eps,
                initial_scale=initial_scale,
                eps_in_sqrt=eps_in_sqrt,
                bias_correction=bias_correction,
            )
        ],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
        after_lr=_momentum(momentum, nesterov, None),
    )


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adamax with GC (``gctf.optimizers.adamax``).

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamax`.
      b1: first-moment decay.
      b2: decay of the infinity norm.
      eps: added to the denominator.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.adamax(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [optax.scale_by_adamax(b1=b1, b2=b2, eps=eps)],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adamax with decoupled weight decay and GC.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamaxw`.
      b1: first-moment decay.
      b2: decay of the infinity norm.
      eps: added to the denominator.
      weight_decay: decoupled decay rate.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.adamaxw(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [optax.scale_by_adamax(b1=b1, b2=b2, eps=eps)],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="decoupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def radam(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    *,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Rectified Adam with GC (the core of Ranger, ``use_gc=True``).

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.radam`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      threshold: the rectification threshold.
      nesterov: Nesterov momentum.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3), Ranger's
        ``gc_conv_only``.
      apply_to: ``"gradient"`` or ``"update"`` (Ranger's ``gc_loc=False``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.radam(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [
            optax.scale_by_radam(
                b1=b1,
                b2=b2,
                eps=eps,
                eps_root=eps_root,
                threshold=threshold,
                nesterov=nesterov,
            )
        ],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="coupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LAMB with GC.

    ``apply_to="gradient"``: Adam moments of ``GC(g)``, plus decoupled decay,
    scaled by the trust ratio as in :func:`optax.lamb`.
    ``apply_to="update"``: the trust-ratio-scaled step is centralized, so the
    step actually applied has zero mean per output unit.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.lamb`.
      b1: first-moment decay.
      b2: second-moment decay.
      eps: added to the denominator.
      eps_root: added inside the square root.
      weight_decay: decoupled decay, inside the trust ratio (as optax).
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.lamb(1e-3, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="decoupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
        after_decay=[optax.scale_by_trust_ratio()],
    )


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    weight_decay_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion with GC.

    ``apply_to="gradient"``: the momentum sees ``GC(g)``; the sign step and
    the decoupled decay are as in :func:`optax.lion`. ``apply_to="update"``
    centralizes ``sign(...) + weight_decay * w``, so the applied step is no
    longer a pure sign vector.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.lion`.
      b1: interpolation for the sign step.
      b2: momentum decay.
      mu_dtype: dtype of the momentum.
      weight_decay: decoupled decay rate.
      weight_decay_mask: which leaves decay.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      mask: which leaves GC touches.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.lion(1e-4, apply_to="update")
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # GC'd step: zero per unit
      >>> bool(jnp.abs(col_sums).max() < 1e-6)
      True
    """
    return _recipe(
        learning_rate,
        [optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)],
        weight_decay=weight_decay,
        weight_decay_mask=weight_decay_mask,
        decay="decoupled",
        apply_to=apply_to,
        conv_only=conv_only,
        layout=layout,
        reduction_axes=reduction_axes,
        mask=mask,
    )
