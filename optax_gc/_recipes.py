"""The paper's GC optimizers, as plain chains of optax pieces.

Each recipe is a drop-in for its optax namesake: the same parameters with the
same names, positions, kinds and defaults (``mask`` is the weight-decay mask,
as in :func:`optax.adamw`), then GC's own options, keyword-only (``gc_mask``,
``conv_only``, ``apply_to``, ``layout``, ``reduction_axes``). Every recipe is
built by :func:`_recipe` from the same slots, so the order is stated once:

* coupled decay (``SGD_GC``, ``Adam_GC``: L2 added to the gradient)::

      decay -> GC(gradient) -> statistics -> GC(update) -> learning rate

* decoupled decay (``SGDW_GC``, ``AdamW_GC``)::

      GC(gradient) -> statistics -> decay -> GC(update) -> learning rate

``apply_to="gradient"`` (the paper's ``X_GC``) centralizes in the first GC
slot, ``apply_to="update"`` (the authors' ``Adam_GC2``/``AdamW_GC2``,
Ranger's ``gc_loc=False``) in the second; the other slot is GC masked off
everywhere. Both slots and the decay are always there, so the optimizer
state has the same tree structure whatever the values of ``weight_decay``
(``0`` included), ``mask``, ``gc_mask``, ``apply_to`` and the GC options: a
checkpoint saved with one restores with another, and ``opt_state[i]`` means
the same stage. GC is always applied before the learning rate so that
schedules and ``inject_hyperparams`` see the step optax would produce.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._centralize import centralize
from ._layouts import Layout, ReductionAxes
from ._options import (
    check_bool,
    check_mask_entries,
    check_nesterov,
    check_number,
    check_unit_interval,
    checked_mask,
    static_hint,
)

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
    the decay arrives as an array and must be applied.
    """
    return (
        isinstance(value, int | float | np.number)
        and not isinstance(value, bool | np.bool_)
        and bool(value == 0)
    )


def _is_concrete_zero(value: Any) -> bool | None:
    """``True``/``False`` for a number or concrete array; ``None`` if traced.

    For an option whose only valid value is zero: under
    ``optax.inject_hyperparams`` it arrives as an array (concrete at ``init``,
    traced under ``jit``, where it was already checked).
    """
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, jax.Array | np.ndarray):
        return value.shape == () and bool(value == 0)
    return _is_zero(value)


def _check_recipe_mask(name: str, mask: Any, *, action: str) -> None:
    """A recipe's ``mask``/``gc_mask``: a tree of bools or a function of one.

    A bare bool is refused: ``True`` is the default (``None``) and ``False``
    turns the stage off everywhere. It is also what a callable mask turns
    into under ``optax.inject_hyperparams`` without ``static_args`` (taken
    for a schedule, it is called with the step count), which must not pass
    silently.
    """
    if isinstance(mask, bool | np.bool_) or (
        isinstance(mask, jax.Array)
        and not isinstance(mask, jax.core.Tracer)
        and mask.shape == ()
    ):
        raise ValueError(
            f"{name}={mask!r} is one bool for the whole tree. Give None (every "
            "leaf), a tree of bools like the params, or a function of the "
            f"params that builds one. If you passed a function through "
            f"optax.inject_hyperparams, it was taken for a schedule: "
            f"{static_hint(name)}"
        )
    check_mask_entries(mask, name=name, action=action)


def _decay_stage(weight_decay: optax.ScalarOrSchedule, mask: Any) -> Any:
    """``add_decayed_weights`` under ``mask``, present even at zero decay.

    At a concrete zero it does nothing (and needs no params), but keeps its
    place and state in the chain; the mask is still checked at ``init``.
    """
    inner = optax.masked(
        optax.add_decayed_weights(weight_decay),
        checked_mask(True if mask is None else mask, name="mask", action="decay it"),
    )
    if not _is_zero(weight_decay):
        return inner

    def update_fn(
        updates: optax.Updates, state: Any, params: optax.Params | None = None
    ) -> tuple[optax.Updates, Any]:
        del params
        return updates, state

    return optax.GradientTransformation(inner.init, update_fn)


def _recipe(
    recipe: str,
    learning_rate: optax.ScalarOrSchedule,
    statistics: Sequence[optax.GradientTransformation],
    *,
    weight_decay: optax.ScalarOrSchedule,
    mask: Any,
    decay: _DecayKind,
    namesake_decays: bool,
    weight_decay_mask: Any,
    gc_mask: Any,
    conv_only: bool,
    apply_to: ApplyTo,
    layout: Layout,
    reduction_axes: ReductionAxes | None,
    after_decay: Sequence[optax.GradientTransformation] = (),
    after_lr: Sequence[optax.GradientTransformation] = (),
) -> optax.GradientTransformationExtraArgs:
    """Chains GC, decay and an optimizer's pieces in the reference order.

    ``namesake_decays``: whether the optax namesake has a ``weight_decay``
    (and a ``mask``) of its own. ``after_decay`` follows the decoupled decay
    (LAMB's trust ratio, the authors' AdamW step size); ``after_lr`` follows
    the learning rate (optax's RMSprop momentum).
    """
    _check_apply_to(apply_to)
    check_number("learning_rate", learning_rate, allow_schedule=True)
    check_number("weight_decay", weight_decay, allow_schedule=True)
    if weight_decay_mask is not None:
        if mask is not None:
            raise TypeError(
                f"optax_gc.{recipe} got both mask and weight_decay_mask; they are "
                "the same option (the decay's mask). Pass mask= only."
            )
        warnings.warn(
            "weight_decay_mask is deprecated since optax-gc 0.2.0 and will be "
            "removed in 0.3.0: the decay's mask is now mask=, as in optax (GC's "
            "own mask is gc_mask=).",
            DeprecationWarning,
            stacklevel=3,
        )
        mask = weight_decay_mask
    if mask is not None:
        _check_recipe_mask("mask", mask, action="decay it")
        if not namesake_decays and _is_zero(weight_decay):
            raise ValueError(
                f"optax_gc.{recipe} got mask= with weight_decay={weight_decay!r}. "
                "Since optax-gc 0.2.0 mask is the weight-decay mask (as in "
                "optax.adamw), so with no decay it would do nothing. To choose "
                "which leaves GC touches, pass gc_mask=; to decay, give a "
                "weight_decay."
            )
    if gc_mask is not None:
        _check_recipe_mask("gc_mask", gc_mask, action="centralize it")
    gc = centralize(conv_only=conv_only, layout=layout, reduction_axes=reduction_axes)
    on = checked_mask(
        True if gc_mask is None else gc_mask, name="gc_mask", action="centralize it"
    )
    off = checked_mask(False, name="gc_mask", action="centralize it")
    gc_gradient = optax.masked(gc, on if apply_to == "gradient" else off)
    gc_update = optax.masked(gc, off if apply_to == "gradient" else on)
    decayed = _decay_stage(weight_decay, mask)
    coupled = [decayed] if decay == "coupled" else []
    decoupled = [decayed] if decay == "decoupled" else []
    return optax.chain(
        *coupled,
        gc_gradient,
        *statistics,
        *decoupled,
        *after_decay,
        gc_update,
        optax.scale_by_learning_rate(learning_rate),
        *after_lr,
    )


def _momentum(
    momentum: Any, nesterov: bool, accumulator_dtype: Any
) -> optax.GradientTransformation:
    """PyTorch-style heavy ball: the buffer starts as the first gradient.

    Without momentum an identity holds its place, as in :func:`optax.sgd`.
    """
    check_number("momentum", momentum, allow_none=True)
    check_nesterov(nesterov, momentum)
    if momentum is None:
        return optax.identity()
    return optax.trace(
        decay=momentum, nesterov=nesterov, accumulator_dtype=accumulator_dtype
    )


def _check_adam(b1: Any, b2: Any, eps: Any, eps_root: Any = 0.0) -> None:
    check_unit_interval("b1", b1)
    check_unit_interval("b2", b2)
    check_number("eps", eps)
    check_number("eps_root", eps_root)


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with Gradient Centralization: the authors' ``SGD_GC``.

    ``g' = GC(g + weight_decay * w)``; with ``momentum`` the buffer starts as
    the first ``g'`` and then ``buf = momentum * buf + g'`` (dampening 0, as
    :class:`torch.optim.SGD`), the step is ``buf`` (or ``g' + momentum * buf``
    with ``nesterov``); ``w -= learning_rate * step``. ``conv_only=True`` is
    ``SGD_GCC``, the paper's ImageNet recipe.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.sgd`.
      momentum: heavy-ball momentum (``>= 0``), or ``None`` for none.
      nesterov: Nesterov momentum (needs a momentum).
      accumulator_dtype: dtype of the momentum buffer (default: the params').
      weight_decay: coupled L2 decay (``>= 0``), added to the gradient before
        GC, as PyTorch's ``weight_decay``.
      mask: which leaves decay, as ``mask`` of :func:`optax.adamw` (default:
        all, as PyTorch). Needs a ``weight_decay``.
      gc_mask: which leaves GC touches, as ``mask`` of
        :func:`optax_gc.centralize`.
      conv_only: centralize only conv kernels (rank > 3), the paper's GCC.
      apply_to: ``"gradient"`` (the paper) or ``"update"`` (GC on the step).
        Without weight decay the two are equal for SGD: GC is linear.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Raises:
      TypeError, ValueError: for a wrong hyperparameter or option, naming it.

    Example:
      >>> import jax.numpy as jnp
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
        "sgd",
        learning_rate,
        [_momentum(momentum, nesterov, accumulator_dtype)],
        weight_decay=weight_decay,
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )


def sgdw(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float | jax.Array | None = None,
    nesterov: bool = False,
    accumulator_dtype: Any | None = None,
    *,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """SGD with decoupled weight decay and GC: the authors' ``SGDW_GC``.

    GC on the gradient, momentum as :func:`optax_gc.sgd`, then
    ``w -= learning_rate * (buf + weight_decay * w)``: the decay is not
    centralized. With ``apply_to="update"`` the whole step including the
    decay is centralized. optax has no ``sgdw``: the arguments are those of
    :func:`optax.sgd`, then ``weight_decay`` (decoupled, default ``1e-4`` as
    :func:`optax.adamw`) and its ``mask``.

    Args:
      learning_rate: a scalar or a schedule.
      momentum: heavy-ball momentum, or ``None``.
      nesterov: Nesterov momentum (needs a momentum).
      accumulator_dtype: dtype of the momentum buffer.
      weight_decay: decoupled decay rate (multiplied by the learning rate).
      mask: which leaves decay, as ``mask`` of :func:`optax.adamw`.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> tx = optax_gc.sgdw(0.1, momentum=0.9, mask={"kernel": True,
      ...                                              "bias": False})
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> updates["bias"]  # not decayed: -0.1 * g
      Array([-0.1, -0.1], dtype=float32)
    """
    return _recipe(
        "sgdw",
        learning_rate,
        [_momentum(momentum, nesterov, accumulator_dtype)],
        weight_decay=weight_decay,
        mask=mask,
        decay="decoupled",
        namesake_decays=True,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )


def _adam_statistics(
    b1: Any, b2: Any, eps: Any, eps_root: Any, mu_dtype: Any, nesterov: Any
) -> optax.GradientTransformation:
    _check_adam(b1, b2, eps, eps_root)
    check_bool("nesterov", nesterov)
    return optax.scale_by_adam(
        b1=b1, b2=b2, eps=eps, eps_root=eps_root, mu_dtype=mu_dtype, nesterov=nesterov
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
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adam with GC: the authors' ``Adam_GC``, or ``Adam_GC2`` on the update.

    ``apply_to="gradient"``: the moments see ``GC(g + weight_decay * w)``.
    ``apply_to="update"``: the moments see ``g + weight_decay * w`` and the
    step ``m_hat / (sqrt(v_hat) + eps)`` is centralized, which the authors
    say usually works better for adaptive methods.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adam`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      nesterov: Nesterov momentum (NAdam), as :func:`optax.adam`.
      weight_decay: coupled L2 decay, added to the gradient before GC (use
        :func:`optax_gc.adamw` for decoupled decay).
      mask: which leaves decay. Needs a ``weight_decay``.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` (``Adam_GC``) or ``"update"`` (``Adam_GC2``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

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
        "adam",
        learning_rate,
        [_adam_statistics(b1, b2, eps, eps_root, mu_dtype, nesterov)],
        weight_decay=weight_decay,
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )


def _scale_by_raw_adam(
    b1: float, b2: float, eps: float, mu_dtype: Any
) -> optax.GradientTransformation:
    """``m / (sqrt(v) + eps)`` without bias correction (the authors' AdamW)."""

    def init_fn(params: optax.Params) -> optax.ScaleByAdamState:
        def zeros(p: Any, dtype: Any = None) -> Any:
            return jnp.zeros_like(p, dtype=dtype or p.dtype)

        return optax.ScaleByAdamState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(lambda p: zeros(p, mu_dtype), params),
            nu=jax.tree.map(zeros, params),
        )

    def update_fn(
        updates: optax.Updates,
        state: optax.ScaleByAdamState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, optax.ScaleByAdamState]:
        del params
        mu = jax.tree.map(
            lambda m, g: (b1 * m + (1 - b1) * g).astype(m.dtype), state.mu, updates
        )
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        steps = jax.tree.map(
            lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu, nu, updates
        )
        count = optax.safe_int32_increment(state.count)
        return steps, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def _scale_by_authors_step_size(b1: float, b2: float) -> optax.GradientTransformation:
    """Scales by ``sqrt(1 - b2^t) / (1 - b1^t)``, computed in at least float32."""

    def init_fn(params: optax.Params) -> optax.ScaleByScheduleState:
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: optax.Updates,
        state: optax.ScaleByScheduleState,
        params: optax.Params | None = None,
    ) -> tuple[optax.Updates, optax.ScaleByScheduleState]:
        del params
        count = optax.safe_int32_increment(state.count)

        def scale(u: jax.Array) -> jax.Array:
            # At least float32: in bfloat16, 0.999 rounds to 1 and the step to 0.
            acc = jnp.promote_types(u.dtype, jnp.float32)
            t = count.astype(acc)
            factor = jnp.sqrt(1 - b2**t) / (1 - b1**t)
            return (u.astype(acc) * factor).astype(u.dtype)

        return jax.tree.map(scale, updates), optax.ScaleByScheduleState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any | None = None,
    *,
    nesterov: bool = False,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    authors_adamw: bool = False,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """AdamW with GC: ``AdamW_GC``, or ``AdamW_GC2`` on the update.

    ``apply_to="gradient"``: moments of ``GC(g)``, then
    ``w -= lr * (adam_step + weight_decay * w)`` with the decay outside GC.
    ``apply_to="update"``: ``w -= lr * GC(adam_step + weight_decay * w)``.
    This is standard AdamW (:func:`optax.adamw`, ``torch.optim.AdamW``).

    The authors' own ``AdamW`` (``GC_code/CIFAR100/algorithm/Adam.py``) is
    not: it applies the bias-corrected step size
    ``s_t = lr * sqrt(1 - b2^t) / (1 - b1^t)`` to the decay term too and
    keeps ``eps`` outside the bias correction,
    ``w -= s_t * (weight_decay * w + m / (sqrt(v) + eps))``, so its decay is
    ``s_t / lr`` (0.316, 0.235, 0.202, ... with the default betas) of
    AdamW's. ``authors_adamw=True`` reproduces those numbers exactly.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamw`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      eps: added to the denominator.
      eps_root: added inside the square root.
      mu_dtype: dtype of the first moment.
      weight_decay: decoupled decay rate.
      mask: which leaves decay, as in :func:`optax.adamw`.
      nesterov: Nesterov momentum (NAdamW).
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` (``AdamW_GC``) or ``"update"`` (``AdamW_GC2``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      authors_adamw: the authors' AdamW step instead of the standard one
        (no ``eps_root``, no ``nesterov``).
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import jax.numpy as jnp
      >>> import optax_gc
      >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
      >>> grads = {"kernel": jnp.arange(6.0).reshape(3, 2), "bias": jnp.ones(2)}
      >>> decay_kernels = {"kernel": True, "bias": False}
      >>> tx = optax_gc.adamw(1e-3, weight_decay=0.1, mask=decay_kernels)
      >>> updates, _ = tx.update(grads, tx.init(params), params)
      >>> col_sums = updates["kernel"].sum(axis=0)  # -lr * (GC'd step + decay)
      >>> col_sums
      Array([-0.0003, -0.0003], dtype=float32)
    """
    check_bool("authors_adamw", authors_adamw)
    if not authors_adamw:
        statistics = _adam_statistics(b1, b2, eps, eps_root, mu_dtype, nesterov)
        after_decay: list[optax.GradientTransformation] = []
    else:
        _check_adam(b1, b2, eps, eps_root)
        check_bool("nesterov", nesterov)
        if nesterov or _is_concrete_zero(eps_root) is False:
            raise ValueError(
                "authors_adamw=True is the authors' AdamW, which has no nesterov "
                f"and no eps_root; got nesterov={nesterov!r}, "
                f"eps_root={eps_root!r}."
            )
        statistics = _scale_by_raw_adam(b1, b2, eps, mu_dtype)
        after_decay = [_scale_by_authors_step_size(b1, b2)]
    return _recipe(
        "adamw",
        learning_rate,
        [statistics],
        weight_decay=weight_decay,
        mask=mask,
        decay="decoupled",
        namesake_decays=True,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
        after_decay=after_decay,
    )


nadam = functools.partial(adam, nesterov=True)
nadam.__doc__ = """NAdam with GC: :func:`optax_gc.adam` with ``nesterov=True``.

As :func:`optax.nadam`, a :func:`functools.partial` of Adam: every argument
of :func:`optax_gc.adam`, with ``nesterov`` defaulting to ``True``.

Example:
  >>> import optax
  >>> import optax_gc
  >>> tx = optax_gc.nadam(1e-3)
  >>> # the same as:
  >>> tx = optax.chain(optax_gc.centralize(), optax.nadam(1e-3))
"""

nadamw = functools.partial(adamw, nesterov=True)
nadamw.__doc__ = """NAdamW with GC: :func:`optax_gc.adamw` with ``nesterov=True``.

As :func:`optax.nadamw`, a :func:`functools.partial` of AdamW: every
argument of :func:`optax_gc.adamw`, with ``nesterov`` defaulting to ``True``.

Example:
  >>> import optax
  >>> import optax_gc
  >>> tx = optax_gc.nadamw(1e-3, weight_decay=1e-2)
  >>> # the same as (the decay is not centralized):
  >>> tx = optax.chain(optax_gc.centralize(), optax.nadamw(1e-3, weight_decay=1e-2))
"""

# doctest does not look inside functools.partial objects: run these too.
__test__ = {"nadam": nadam.__doc__, "nadamw": nadamw.__doc__}


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
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
      mask: which leaves decay. Needs a ``weight_decay``.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.adagrad(0.1, weight_decay=1e-4)
      >>> # the same as (the L2 term is centralized with the gradient):
      >>> tx = optax.chain(optax.add_decayed_weights(1e-4),
      ...                  optax_gc.centralize(), optax.adagrad(0.1))
    """
    check_number("initial_accumulator_value", initial_accumulator_value)
    check_number("eps", eps)
    return _recipe(
        "adagrad",
        learning_rate,
        [
            optax.scale_by_rss(
                initial_accumulator_value=initial_accumulator_value, eps=eps
            )
        ],
        weight_decay=weight_decay,
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
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
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """RMSprop with GC: what ``gctf.optimizers.rmsprop`` means to do.

    The running mean of squares sees ``GC(g + weight_decay * w)``. As in
    :func:`optax.rmsprop`, ``eps`` is inside the square root unless
    ``eps_in_sqrt=False`` (PyTorch's and Keras' placement) and momentum acts
    on the learning-rate-scaled step.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.rmsprop`.
      decay: decay of the running mean of squares, in ``[0, 1)``.
      eps: the denominator's epsilon.
      initial_scale: starting value of the running mean of squares.
      eps_in_sqrt: put ``eps`` inside the square root (optax's default).
      centered: divide by the running standard deviation instead.
      momentum: momentum on the step, or ``None``.
      nesterov: Nesterov momentum (needs a momentum).
      bias_correction: debias the running means.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      mask: which leaves decay. Needs a ``weight_decay``.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.rmsprop(1e-4, eps_in_sqrt=False)  # Keras' RMSprop
      >>> # the same as:
      >>> tx = optax.chain(optax_gc.centralize(),
      ...                  optax.rmsprop(1e-4, eps_in_sqrt=False))
    """
    check_unit_interval("decay", decay)
    check_number("eps", eps)
    check_number("initial_scale", initial_scale)
    for flag, value in (
        ("eps_in_sqrt", eps_in_sqrt),
        ("centered", centered),
        ("bias_correction", bias_correction),
    ):
        check_bool(flag, value)
    scale = optax.scale_by_stddev if centered else optax.scale_by_rms
    return _recipe(
        "rmsprop",
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
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
        after_lr=[_momentum(momentum, nesterov, None)],
    )


def adamax(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adamax with GC (``gctf.optimizers.adamax``).

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamax`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: decay of the infinity norm, in ``[0, 1)``.
      eps: added to the denominator.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      mask: which leaves decay. Needs a ``weight_decay``.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.adamax(2e-3)
      >>> # the same as:
      >>> tx = optax.chain(optax_gc.centralize(), optax.adamax(2e-3))
    """
    _check_adam(b1, b2, eps)
    return _recipe(
        "adamax",
        learning_rate,
        [optax.scale_by_adamax(b1=b1, b2=b2, eps=eps)],
        weight_decay=weight_decay,
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )


def adamaxw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    mask: Any | None = None,
    *,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Adamax with decoupled weight decay and GC.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.adamaxw`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: decay of the infinity norm, in ``[0, 1)``.
      eps: added to the denominator.
      weight_decay: decoupled decay rate.
      mask: which leaves decay, as in :func:`optax.adamaxw`.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.adamaxw(2e-3, weight_decay=1e-2)
      >>> # the same as (the decay is not centralized):
      >>> tx = optax.chain(optax_gc.centralize(),
      ...                  optax.adamaxw(2e-3, weight_decay=1e-2))
    """
    _check_adam(b1, b2, eps)
    return _recipe(
        "adamaxw",
        learning_rate,
        [optax.scale_by_adamax(b1=b1, b2=b2, eps=eps)],
        weight_decay=weight_decay,
        mask=mask,
        decay="decoupled",
        namesake_decays=True,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
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
    mask: Any | None = None,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Rectified Adam with GC (the core of Ranger, ``use_gc=True``).

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.radam`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      eps: added to the denominator.
      eps_root: added inside the square root.
      threshold: the rectification threshold.
      nesterov: Nesterov momentum.
      weight_decay: coupled L2 decay, added to the gradient before GC.
      mask: which leaves decay. Needs a ``weight_decay``.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3), Ranger's
        ``gc_conv_only``.
      apply_to: ``"gradient"`` or ``"update"`` (Ranger's ``gc_loc=False``).
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.radam(1e-3, conv_only=True)  # Ranger's gc_conv_only
      >>> # the same as:
      >>> tx = optax.chain(optax_gc.centralize(conv_only=True), optax.radam(1e-3))
    """
    _check_adam(b1, b2, eps, eps_root)
    check_number("threshold", threshold)
    check_bool("nesterov", nesterov)
    return _recipe(
        "radam",
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
        mask=mask,
        decay="coupled",
        namesake_decays=False,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )


def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: Any | None = None,
    *,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """LAMB with GC.

    ``apply_to="gradient"``: Adam moments of ``GC(g)``, plus decoupled decay,
    scaled by the trust ratio as in :func:`optax.lamb`.
    ``apply_to="update"``: the trust-ratio-scaled step is centralized, so the
    step actually applied has zero mean per output unit.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.lamb`.
      b1: first-moment decay, in ``[0, 1)``.
      b2: second-moment decay, in ``[0, 1)``.
      eps: added to the denominator.
      eps_root: added inside the square root.
      weight_decay: decoupled decay, inside the trust ratio (as optax).
      mask: which leaves decay, as in :func:`optax.lamb`.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.lamb(1e-3, weight_decay=1e-2)
      >>> # the same as (GC on the gradient, ahead of the trust ratio):
      >>> tx = optax.chain(optax_gc.centralize(), optax.lamb(1e-3, weight_decay=1e-2))
    """
    _check_adam(b1, b2, eps, eps_root)
    return _recipe(
        "lamb",
        learning_rate,
        [optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=eps_root)],
        weight_decay=weight_decay,
        mask=mask,
        decay="decoupled",
        namesake_decays=True,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
        after_decay=[optax.scale_by_trust_ratio()],
    )


def lion(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.99,
    mu_dtype: Any | None = None,
    weight_decay: optax.ScalarOrSchedule = 1e-3,
    mask: Any | None = None,
    *,
    gc_mask: Any | None = None,
    conv_only: bool = False,
    apply_to: ApplyTo = "gradient",
    layout: Layout = "channels_last",
    reduction_axes: ReductionAxes | None = None,
    weight_decay_mask: Any | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Lion with GC.

    ``apply_to="gradient"``: the momentum sees ``GC(g)``; the sign step and
    the decoupled decay are as in :func:`optax.lion`. ``apply_to="update"``
    centralizes ``sign(...) + weight_decay * w``, so the applied step is no
    longer a pure sign vector.

    Args:
      learning_rate: a scalar or a schedule, as :func:`optax.lion`.
      b1: interpolation for the sign step, in ``[0, 1)``.
      b2: momentum decay, in ``[0, 1)``.
      mu_dtype: dtype of the momentum.
      weight_decay: decoupled decay rate.
      mask: which leaves decay, as in :func:`optax.lion`.
      gc_mask: which leaves GC touches.
      conv_only: centralize only conv kernels (rank > 3).
      apply_to: ``"gradient"`` or ``"update"``.
      layout: see :func:`optax_gc.centralize`.
      reduction_axes: see :func:`optax_gc.centralize`.
      weight_decay_mask: deprecated alias of ``mask``.

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example:
      >>> import optax
      >>> import optax_gc
      >>> tx = optax_gc.lion(1e-4)
      >>> # the same as (the decay is not centralized):
      >>> tx = optax.chain(optax_gc.centralize(), optax.lion(1e-4))
    """
    check_unit_interval("b1", b1)
    check_unit_interval("b2", b2)
    return _recipe(
        "lion",
        learning_rate,
        [optax.scale_by_lion(b1=b1, b2=b2, mu_dtype=mu_dtype)],
        weight_decay=weight_decay,
        mask=mask,
        decay="decoupled",
        namesake_decays=True,
        weight_decay_mask=weight_decay_mask,
        gc_mask=gc_mask,
        conv_only=conv_only,
        apply_to=apply_to,
        layout=layout,
        reduction_axes=reduction_axes,
    )
