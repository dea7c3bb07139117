"""Float64 NumPy references for the optax-gc paper recipes.

Written from the algorithm descriptions only: the paper's reference
optimizers (``SGD_GC``, ``SGDW_GC``, ``Adam_GC``, ``Adam_GC2``, ...) as
summarised in GC_REFERENCE.md, the update rules stated in optax's docstrings
(optax 0.2.8) and torch.optim's documented algorithms. It imports neither
jax, optax nor optax_gc, so a bug there cannot hide here.

Parameters are flat dicts ``{"conv/kernel": array, ...}`` of float64 arrays
in the Flax layout (Dense ``(in, out)``, Conv ``(kh, kw, in, out)``).

Where GC goes (``wd`` the weight decay, ``lr`` the learning rate):

* coupled-L2 recipes (sgd, adam, adagrad, rmsprop, nadam, adamax, radam):
  ``g' = g + wd * w``; with ``apply_to="gradient"`` the optimizer sees
  ``GC(g')``, with ``apply_to="update"`` it sees ``g'`` and its step is
  centralized. Then ``w -= lr * step``.
* decoupled recipes (sgdw, adamw, nadamw, adamaxw, lion):
  ``"gradient"``: ``w -= lr * (step(GC(g)) + wd * w)`` (the decay is not
  centralized); ``"update"``: ``w -= lr * GC(step(g) + wd * w)``.
* lamb: ``u = adam_step + wd * w`` scaled by the trust ratio
  ``||w|| / ||u||`` (1 where either norm is 0); ``"gradient"`` feeds GC(g)
  to the Adam moments, ``"update"`` centralizes the trust-scaled step.

Example:
  >>> import numpy as np
  >>> params = {"dense/kernel": np.array([[1.0, 2.0], [3.0, 4.0]])}
  >>> grads = {"dense/kernel": np.array([[1.0, 4.0], [3.0, 6.0]])}
  >>> opt = ReferenceRecipe("sgd", 0.5, gc_axes=flax_gc_axes(params))
  >>> state = opt.init(params)
  >>> new_params, state, update = opt.step(params, grads, state)
  >>> update["dense/kernel"]  # -lr * GC(g): each column sums to zero
  array([[ 0.5,  0.5],
         [-0.5, -0.5]])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Axes = tuple[int, ...] | None
Params = dict[str, np.ndarray]

COUPLED = ("sgd", "adam", "adagrad", "rmsprop", "nadam", "adamax", "radam")
DECOUPLED = ("sgdw", "adamw", "nadamw", "adamaxw", "lion", "lamb")
RECIPES = COUPLED + DECOUPLED

# The recipes' own weight-decay defaults (the optax counterparts' for the
# decoupled ones; none for the coupled ones).
DEFAULT_WEIGHT_DECAY = {
    **dict.fromkeys(COUPLED, 0.0),
    "sgdw": 1e-4,
    "adamw": 1e-4,
    "nadamw": 1e-4,
    "adamaxw": 1e-4,
    "lion": 1e-3,
    "lamb": 0.0,
}


# --- Gradient Centralization ---------------------------------------------


def centralize(g: np.ndarray, axes: Axes) -> np.ndarray:
    """Subtracts from ``g`` its mean over ``axes``; ``None`` leaves it alone."""
    if axes is None:
        return g
    return g - np.mean(g, axis=axes, keepdims=True)


def leaf_gc_axes(
    shape: tuple[int, ...],
    *,
    conv_only: bool = False,
    axes: Axes | str = "layout",
) -> Axes:
    """The fan-in axes GC averages a leaf over, or ``None`` to leave it alone.

    Args:
      shape: the leaf's shape.
      conv_only: only leaves of rank > 3 (conv kernels) are centralized.
      axes: ``"layout"`` for the Flax rule (every axis but the last, for
        rank >= 2), else the explicit axes (or ``None``) given for the leaf.

    Returns:
      Sorted non-negative axes, or ``None``. A fan-in of one entry per unit
      is left alone (GC would zero that gradient).
    """
    rank = len(shape)
    if axes == "layout":
        if rank <= 1:
            return None
        axes = tuple(range(rank - 1))
    if axes is None or (conv_only and rank <= 3):
        return None
    axes = tuple(sorted(a % rank for a in axes))
    if math.prod(shape[a] for a in axes) == 1:
        return None
    return axes


def flax_gc_axes(
    params: Mapping[str, np.ndarray],
    *,
    conv_only: bool = False,
    mask: Mapping[str, bool] | None = None,
    reduction_axes: Mapping[str, Axes] | None = None,
) -> dict[str, Axes]:
    """Per-leaf GC axes for a flat Flax-layout parameter dict.

    Args:
      params: flat dict of arrays.
      conv_only: the paper's GCC: only rank > 3 leaves.
      mask: flat dict of bools; ``False`` leaves are not centralized.
      reduction_axes: flat dict of per-leaf axes (or ``None``), overriding
        the layout rule for every leaf.

    Returns:
      A flat dict of axes (or ``None``) with the keys of ``params``.
    """
    out: dict[str, Axes] = {}
    for key, w in params.items():
        spec: Axes | str = "layout" if reduction_axes is None else reduction_axes[key]
        axes = leaf_gc_axes(np.shape(w), conv_only=conv_only, axes=spec)
        if mask is not None and not mask[key]:
            axes = None
        out[key] = axes
    return out


# --- The optimizers' step directions, one leaf at a time ------------------
#
# Each ``direction`` returns the step d (the update is -lr * d) and the new
# per-leaf state; ``t`` is the 1-based step number.


class _Sgd:
    """PyTorch-style momentum: buf_1 = g_1, buf_t = m * buf_{t-1} + g_t."""

    def __init__(self, momentum=None, nesterov=False, accumulator_dtype=None):
        del accumulator_dtype
        self.momentum, self.nesterov = momentum, nesterov

    def init(self, w):
        return None

    def direction(self, g, buf, t):
        if self.momentum is None:
            return g, None
        m = self.momentum
        buf = g.copy() if buf is None else m * buf + g
        return (g + m * buf if self.nesterov else buf), buf


class _Adam:
    """Adam; with ``nesterov`` the NAdam first moment of optax's docstring."""

    def __init__(
        self, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, mu_dtype=None, nesterov=False
    ):
        del mu_dtype
        self.b1, self.b2, self.eps, self.eps_root = b1, b2, eps, eps_root
        self.nesterov = nesterov

    def init(self, w):
        return (np.zeros_like(w), np.zeros_like(w))

    def moments(self, g, state, t):
        b1, b2 = self.b1, self.b2
        m, v = state
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if self.nesterov:
            m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        else:
            m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return m_hat, v_hat, (m, v)

    def direction(self, g, state, t):
        m_hat, v_hat, state = self.moments(g, state, t)
        return m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps), state


class _RAdam(_Adam):
    """Rectified Adam: rectified Adam step once rho_t >= threshold, else m_hat."""

    def __init__(
        self, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, nesterov=False
    ):
        super().__init__(b1, b2, eps, eps_root, nesterov=nesterov)
        self.threshold = threshold

    def direction(self, g, state, t):
        m_hat, v_hat, state = self.moments(g, state, t)
        b2 = self.b2
        rho_inf = 2 / (1 - b2) - 1
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        if rho < self.threshold:
            return m_hat, state
        r = math.sqrt(
            (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)
        )
        return r * m_hat / (np.sqrt(v_hat + self.eps_root) + self.eps), state


class _Adamax:
    """u_t = max(|g| + eps, b2 * u_{t-1}); step = m_hat / u_t."""

    def __init__(self, b1=0.9, b2=0.999, eps=1e-8):
        self.b1, self.b2, self.eps = b1, b2, eps

    def init(self, w):
        return (np.zeros_like(w), np.zeros_like(w))

    def direction(self, g, state, t):
        m, u = state
        m = self.b1 * m + (1 - self.b1) * g
        u = np.maximum(np.abs(g) + self.eps, self.b2 * u)
        return m / (1 - self.b1**t) / u, (m, u)


class _Adagrad:
    """s = initial_accumulator_value + sum g^2; step = g / sqrt(s + eps)."""

    def __init__(self, initial_accumulator_value=0.1, eps=1e-7):
        self.init_value, self.eps = initial_accumulator_value, eps

    def init(self, w):
        return np.full_like(w, self.init_value)

    def direction(self, g, s, t):
        s = s + g * g
        safe = np.where(s > 0, s, 1.0)
        return np.where(s > 0, g / np.sqrt(safe + self.eps), 0.0), s


class _RMSprop:
    """optax's rmsprop, momentum applied to the (lr-free) scaled gradient.

    optax applies the momentum trace after the learning rate; for a constant
    learning rate that is the same step (the trace is linear).
    """

    def __init__(
        self,
        decay=0.9,
        eps=1e-8,
        initial_scale=0.0,
        eps_in_sqrt=True,
        centered=False,
        momentum=None,
        nesterov=False,
        bias_correction=False,
    ):
        self.decay, self.eps, self.initial_scale = decay, eps, initial_scale
        self.eps_in_sqrt, self.centered = eps_in_sqrt, centered
        self.momentum, self.nesterov = momentum, nesterov
        self.bias_correction = bias_correction

    def init(self, w):
        return (np.zeros_like(w), np.full_like(w, self.initial_scale), np.zeros_like(w))

    def direction(self, g, state, t):
        mu, nu, buf = state
        d = self.decay
        nu = d * nu + (1 - d) * g * g
        mu = d * mu + (1 - d) * g
        nu_hat, mu_hat = nu, mu
        if self.bias_correction:
            nu_hat, mu_hat = nu / (1 - d**t), mu / (1 - d**t)
        var = nu_hat - mu_hat * mu_hat if self.centered else nu_hat
        if self.eps_in_sqrt:
            step = g / np.sqrt(var + self.eps)
        else:
            step = g / (np.sqrt(var) + self.eps)
        if self.momentum is not None:
            # optax's trace starts at zero, so buf_1 = step_1 as in PyTorch.
            buf = self.momentum * buf + step
            step = step + self.momentum * buf if self.nesterov else buf
        return step, (mu, nu, buf)


class _Lion:
    """c = b1 * m + (1 - b1) * g; step = sign(c); m = b2 * m + (1 - b2) * g."""

    def __init__(self, b1=0.9, b2=0.99, mu_dtype=None):
        del mu_dtype
        self.b1, self.b2 = b1, b2

    def init(self, w):
        return np.zeros_like(w)

    def direction(self, g, m, t):
        step = np.sign(self.b1 * m + (1 - self.b1) * g)
        return step, self.b2 * m + (1 - self.b2) * g


def _direction_factory(name: str, hparams: Mapping[str, Any]) -> Any:
    kinds: dict[str, Callable[..., Any]] = {
        "sgd": _Sgd,
        "sgdw": _Sgd,
        "adam": _Adam,
        "adamw": _Adam,
        "nadam": lambda **h: _Adam(**h, nesterov=True),
        "nadamw": lambda **h: _Adam(**h, nesterov=True),
        # optax.lamb's own defaults differ from adam's (eps=1e-6).
        "lamb": lambda b1=0.9, b2=0.999, eps=1e-6, eps_root=0.0: _Adam(
            b1, b2, eps, eps_root
        ),
        "adagrad": _Adagrad,
        "rmsprop": _RMSprop,
        "adamax": _Adamax,
        "adamaxw": _Adamax,
        "radam": _RAdam,
        "lion": _Lion,
    }
    return kinds[name](**hparams)


def _trust_ratio(w: np.ndarray, u: np.ndarray) -> float:
    w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(u)
    return 1.0 if w_norm == 0 or u_norm == 0 else float(w_norm / u_norm)


class ReferenceRecipe:
    """One optax-gc recipe, stepped in float64 NumPy.

    Args:
      name: the recipe (one of ``RECIPES``).
      learning_rate: a float, or a callable of the 0-based step count (an
        optax schedule's convention).
      weight_decay: the decay strength; ``None`` for the recipe's default.
      weight_decay_mask: flat dict of bools, ``True`` where the decay applies
        (``None``: everywhere).
      apply_to: ``"gradient"`` or ``"update"``: what GC centralizes.
      gc_axes: flat dict of per-leaf GC axes (see :func:`flax_gc_axes`).
      **hparams: the optimizer's hyperparameters, with optax's names.
    """

    def __init__(
        self,
        name: str,
        learning_rate: float | Callable[[int], float],
        *,
        weight_decay: float | None = None,
        weight_decay_mask: Mapping[str, bool] | None = None,
        apply_to: str = "gradient",
        gc_axes: Mapping[str, Axes],
        **hparams: Any,
    ):
        if name not in RECIPES:
            raise ValueError(f"name={name!r}: expected one of {RECIPES}.")
        if apply_to not in ("gradient", "update"):
            raise ValueError(f"apply_to={apply_to!r}: 'gradient' or 'update'.")
        momentum = hparams.get("momentum")
        if name == "rmsprop" and callable(learning_rate) and momentum is not None:
            # optax traces the lr-scaled step; equal to this only for a constant lr.
            raise ValueError("rmsprop momentum is referenced for a constant lr only.")
        self.name, self.learning_rate, self.apply_to = name, learning_rate, apply_to
        self.weight_decay = (
            DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else weight_decay
        )
        self.weight_decay_mask = weight_decay_mask
        self.gc_axes = dict(gc_axes)
        self.opt = _direction_factory(name, hparams)

    def init(self, params: Params) -> dict[str, Any]:
        """The state: the step count and each leaf's optimizer state."""
        return {"count": 0, "leaves": {k: self.opt.init(w) for k, w in params.items()}}

    def _decay(self, key: str) -> float:
        if self.weight_decay_mask is not None and not self.weight_decay_mask[key]:
            return 0.0
        return self.weight_decay

    def step(
        self, params: Params, grads: Params, state: dict[str, Any]
    ) -> tuple[Params, dict[str, Any], Params]:
        """One step: returns the new params, the new state and the update."""
        count = state["count"]
        t = count + 1
        lr = self.learning_rate
        if callable(lr):
            lr = lr(count)
        new_params, updates, leaves = {}, {}, {}
        for key, w in params.items():
            axes, wd = self.gc_axes[key], self._decay(key)
            g = np.asarray(grads[key], dtype=np.float64)
            if self.name in COUPLED:
                g = g + wd * w
            if self.apply_to == "gradient":
                g = centralize(g, axes)
            d, leaves[key] = self.opt.direction(g, state["leaves"][key], t)
            if self.name in DECOUPLED:
                d = d + wd * w
            if self.name == "lamb":
                d = _trust_ratio(w, d) * d
            if self.apply_to == "update":
                d = centralize(d, axes)
            updates[key] = -lr * d
            new_params[key] = w + updates[key]
        return new_params, {"count": t, "leaves": leaves}, updates


class AuthorsAdamW:
    """The authors' AdamW with GC, from ``GC_code/CIFAR100/algorithm/Adam.py``.

    Per leaf, with ``t`` the 1-based step::

        m = b1 * m + (1 - b1) * g          (g centralized for "gradient")
        v = b2 * v + (1 - b2) * g * g
        step_size = lr * sqrt(1 - b2**t) / (1 - b1**t)
        delta = wd * w + m / (sqrt(v) + eps)   (centralized for "update")
        w = w - step_size * delta

    The decay is inside the bias-corrected step size and eps outside the bias
    correction: not the AdamW of optax and PyTorch. Same interface as
    :class:`ReferenceRecipe`.
    """

    def __init__(
        self,
        learning_rate: float,
        *,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        weight_decay_mask: Mapping[str, bool] | None = None,
        apply_to: str = "gradient",
        gc_axes: Mapping[str, Axes],
    ):
        self.lr, self.b1, self.b2, self.eps = learning_rate, b1, b2, eps
        self.wd, self.wd_mask = weight_decay, weight_decay_mask
        self.apply_to, self.gc_axes = apply_to, dict(gc_axes)

    def init(self, params: Params) -> dict[str, Any]:
        zeros = {k: np.zeros_like(w) for k, w in params.items()}
        return {"t": 0, "m": dict(zeros), "v": dict(zeros)}

    def step(
        self, params: Params, grads: Params, state: dict[str, Any]
    ) -> tuple[Params, dict[str, Any], Params]:
        t = state["t"] + 1
        step_size = self.lr * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
        new, updates, m_all, v_all = {}, {}, {}, {}
        for key, w in params.items():
            g = np.asarray(grads[key], dtype=np.float64)
            if self.apply_to == "gradient":
                g = centralize(g, self.gc_axes[key])
            m = self.b1 * state["m"][key] + (1 - self.b1) * g
            v = self.b2 * state["v"][key] + (1 - self.b2) * g * g
            wd = self.wd if self.wd_mask is None or self.wd_mask[key] else 0.0
            delta = wd * w + m / (np.sqrt(v) + self.eps)
            if self.apply_to == "update":
                delta = centralize(delta, self.gc_axes[key])
            updates[key] = -step_size * delta
            new[key], m_all[key], v_all[key] = w + updates[key], m, v
        return new, {"t": t, "m": m_all, "v": v_all}, updates


# --- The test problem shared by the recipe tests --------------------------

# A Flax-layout tree: conv, Conv1D (rank 3: not a conv under conv_only),
# Dense, a Dense(1) head, a Dense layer with one input (fan-in 1: GC leaves
# it alone), biases and a norm scale. Few distinct shapes: eager JAX compiles
# each op once per shape, and that dominates the tests' run time.
PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "conv/kernel": (3, 3, 4, 8),
    "conv1d/kernel": (3, 4, 6),
    "dense/kernel": (32, 16),
    "dense/bias": (16,),
    "head/kernel": (16, 1),
    "head/bias": (1,),
    "in1/kernel": (1, 8),
    "norm/scale": (16,),
}


def init_params(seed: int = 0, keys: tuple[str, ...] | None = None) -> Params:
    """Float64 parameters of ``PARAM_SHAPES`` (or of its ``keys`` only)."""
    rng = np.random.default_rng(seed)
    params = {k: 0.5 * rng.normal(size=s) for k, s in PARAM_SHAPES.items()}
    return params if keys is None else {k: params[k] for k in keys}


_CURVATURE = {
    k: np.random.default_rng([3, i]).uniform(0.5, 1.5, size=s)
    for i, (k, s) in enumerate(PARAM_SHAPES.items())
}


def problem_grads(params: Mapping[str, np.ndarray], t: int) -> Params:
    """Deterministic gradients of step ``t`` that depend on the params.

    The gradient of a fixed nonlinear, coupled objective plus noise drawn
    from step ``t``'s seed. The noise has a per-output-unit offset (shared
    along the fan-in axes) so that GC changes the gradient substantially.
    """
    energy = sum(float(np.sum(np.square(params[k]))) for k in sorted(params))
    grads = {}
    for i, key in enumerate(PARAM_SHAPES):
        if key not in params:
            continue
        rng = np.random.default_rng([7, t, i])  # the same noise in any dict order
        w = np.asarray(params[key], dtype=np.float64)
        noise = rng.normal(size=w.shape) + 2.0 * rng.normal(size=w.shape[-1:])
        grads[key] = (
            _CURVATURE[key] * w
            + 0.5 * np.sin(2.0 * w)
            + 0.3 * noise
            + 0.002 * energy * w
        )
    return grads


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a/b": x}`` -> ``{"a": {"b": x}}``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *outer, last = key.split("/")
        node = tree
        for part in outer:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": x}}`` -> ``{"a/b": x}`` (the inverse of :func:`nest`)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat
