"""The optax-gc recipes against torch.optim, with GC done the PyTorch way.

The torch side is the authors' recipe: parameters in PyTorch layout (Conv
``(out, in, kh, kw)``, Conv1d ``(out, in, k)``, Linear ``(out, in)``), the
gradient of each tensor of rank > 1 centralized over every dim but 0 with
``g - g.mean(dim=(1, ...), keepdim=True)``, coupled L2 decay added to the
gradient before GC (``SGD_GC``), then a stock ``torch.optim`` step. For
``apply_to="update"`` the step itself is centralized: the parameter change
of ``opt.step()`` (which then adds the coupled decay itself) is replaced by
its GC. Like optax_gc, and unlike the authors' code, a tensor with one
fan-in entry per output unit (the ``(1, 8)`` Flax kernel, ``(8, 1)`` in
torch) is left alone rather than zeroed. Both sides run 10 steps in float64
on the same problem and must agree to 1e-10 relative at every step.

Which torch.optim algorithms are optax's, and on what settings:

* SGD (momentum with dampening 0, nesterov): the same. optax's trace starts
  at zero, so its first buffer is the first gradient, as torch's is.
* SGDW: no torch class; ``SGD`` then ``p -= lr * wd * p_old`` by hand.
* Adam, AdamW: the same (eps outside the square root of the bias-corrected
  second moment; optax ``eps_root=0``). AdamW's ``p *= 1 - lr * wd`` before
  the step is optax's ``-lr * wd * p`` with the same ``p``.
* Adamax: the same (``u = max(b2 * u, |g| + eps)``, ``m / (1 - b1**t) / u``).
  AdamaxW: ``Adamax`` plus the decoupled decay by hand.
* NAdam: torch's momentum schedule ``mu_t = b1 * (1 - 0.5 * 0.96**(t *
  momentum_decay))`` differs from optax's constant ``b1`` for the default
  ``momentum_decay=4e-3``. With ``momentum_decay=1e6`` the power underflows
  to exactly 0, ``mu_t = b1`` for every t, and torch's step
  ``lr * ((1 - b1) g / (1 - b1**t) + b1 m / (1 - b1**(t+1))) / (sqrt(v_hat)
  + eps)`` is optax's nadam. ``decoupled_weight_decay=True`` gives nadamw.
* Adagrad: torch divides by ``sqrt(sum) + eps``, optax by ``sqrt(sum +
  eps)``: the same only for ``eps=0`` (both), with
  ``initial_accumulator_value > 0`` so the sum is never 0.
* RMSprop: optax with ``eps_in_sqrt=False`` and ``initial_scale=0`` is
  torch's (centered too). With momentum torch accumulates ``g / avg`` and
  steps by ``lr * buf``; optax traces the lr-scaled step: the same for a
  constant lr. torch has no nesterov or bias correction for RMSprop.
* RAdam: torch's denominator is ``sqrt(v) + eps`` times ``1 /
  sqrt(1 - b2**t)``, i.e. ``sqrt(v_hat) + eps / sqrt(1 - b2**t)``, optax's
  ``sqrt(v_hat) + eps``: the same only for ``eps=0``. torch's threshold is
  ``rho_t > 5``, optax's ``rho_t >= threshold``: the same at 5 (rho_t is
  never exactly 5 here). Rectifier and the un-rectified ``m_hat`` step are
  the same.
* Lion and LAMB have no torch.optim counterpart and are not compared here
  (test_recipes.py covers them against the NumPy reference).

The NumPy reference of reference_optimizers.py is checked against torch on
the same cases, so the three implementations agree with each other.
"""

import math
from typing import Any

import numpy as np
import pytest
from helpers import assert_leaves_close, enable_x64
from reference_optimizers import (
    COUPLED,
    PARAM_SHAPES,
    ReferenceRecipe,
    flatten,
    flax_gc_axes,
    init_params,
    nest,
    problem_grads,
)

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optax_gc  # noqa: E402

STEPS = 10
RTOL, ATOL = 1e-10, 1e-12
WD_MASK = {k: k.endswith("kernel") for k in PARAM_SHAPES}

# Settings on which torch's algorithm is optax's (see the module docstring).
_SAME_AS_TORCH = {
    "adagrad": {"eps": 0.0},
    "rmsprop": {"eps_in_sqrt": False},
    "radam": {"eps": 0.0},
}
_LR = {
    "sgd": 0.05,
    "sgdw": 0.05,
    "adagrad": 0.05,
    "rmsprop": 0.01,
}
_ADAM_FAMILY = {"adam", "adamw", "nadam", "nadamw", "adamax", "adamaxw", "radam"}


def _case(name: str, **kwargs: Any) -> Any:
    kwargs = {**_SAME_AS_TORCH.get(name, {}), **kwargs}
    parts = [name] + [
        k if isinstance(v, dict) or v is True else f"{k}={v}" for k, v in kwargs.items()
    ]
    # optax's adam-family bias corrections are not strict-promotion safe.
    marks = [pytest.mark.standard_promotion] if name in _ADAM_FAMILY else []
    return pytest.param(name, kwargs, id="-".join(parts), marks=marks)


WD = {"weight_decay": 0.1}
UPDATE = {"apply_to": "update"}
CASES = [
    _case("sgd"),
    _case("sgd", momentum=0.9, **WD),
    _case("sgd", momentum=0.9, nesterov=True, **WD),
    _case("sgd", momentum=0.9, **WD, **UPDATE),
    _case("sgd", momentum=0.9, **WD, conv_only=True),
    _case("sgd", momentum=0.9, **WD, mask=WD_MASK),
    _case("sgdw", momentum=0.9, **WD),
    _case("sgdw", momentum=0.9, nesterov=True, **WD, **UPDATE),
    _case("adam", **WD),
    _case("adam", **WD, **UPDATE),
    _case("adam", b1=0.8, b2=0.99, eps=1e-6, **WD),
    _case("adamw", **WD),
    _case("adamw", **WD, **UPDATE),
    _case("adamw", **WD, mask=WD_MASK),
    _case("adagrad", **WD),
    _case("adagrad", initial_accumulator_value=0.5, **WD, **UPDATE),
    _case("rmsprop", **WD),
    _case("rmsprop", momentum=0.9),
    _case("rmsprop", decay=0.95, centered=True, momentum=0.8, **WD, **UPDATE),
    _case("nadam", **WD),
    _case("nadam", **WD, **UPDATE),
    _case("nadamw", **WD),
    _case("nadamw", b1=0.8, b2=0.99, **WD, **UPDATE),
    _case("radam", **WD),
    _case("radam", b1=0.8, b2=0.99, **WD, **UPDATE),
    _case("adamax", **WD),
    _case("adamax", **WD, **UPDATE),
    _case("adamaxw", **WD),
    _case("adamaxw", b1=0.8, b2=0.99, eps=1e-5, **WD, **UPDATE),
]


@pytest.fixture(autouse=True)
def _torch_float64():
    """float64 for torch's own scalar state (NAdam's mu_product, step counts)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# --- Layouts and the PyTorch-side GC --------------------------------------


def to_torch_layout(a: np.ndarray) -> np.ndarray:
    """Flax (kh, kw, in, out) / (k, in, out) / (in, out) -> PyTorch layout."""
    perm = {4: (3, 2, 0, 1), 3: (2, 1, 0), 2: (1, 0)}.get(a.ndim)
    return np.ascontiguousarray(a if perm is None else np.transpose(a, perm))


def to_flax_layout(a: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, kh, kw) / (out, in, k) / (out, in) -> Flax layout."""
    perm = {4: (2, 3, 1, 0), 3: (2, 1, 0), 2: (1, 0)}.get(a.ndim)
    return a if perm is None else np.transpose(a, perm)


def torch_gc(g: Any, *, conv_only: bool = False) -> Any:
    """The authors' GC: centre over every dim but 0, for tensors of rank > 1
    (> 3 for the conv-only GCC); one fan-in entry per unit is left alone."""
    if g.dim() <= (3 if conv_only else 1) or math.prod(g.shape[1:]) == 1:
        return g
    return g - g.mean(dim=tuple(range(1, g.dim())), keepdim=True)


def _torch_optimizer(name, params, lr, weight_decays, hp):
    """The torch.optim optimizer, one param group per tensor (its own decay).

    ``weight_decays`` is the decay torch itself applies to each tensor: the
    coupled decay for apply_to="update" (for "gradient" it is added to the
    gradient before GC instead), the decoupled one for AdamW and NAdamW.
    """
    groups = [
        {"params": [p], "weight_decay": wd}
        for p, wd in zip(params, weight_decays, strict=True)
    ]
    betas = (hp.get("b1", 0.9), hp.get("b2", 0.999))
    optim = torch.optim
    if name in ("sgd", "sgdw"):
        return optim.SGD(
            groups,
            lr=lr,
            momentum=hp.get("momentum") or 0.0,
            nesterov=hp.get("nesterov", False),
            foreach=False,
        )
    if name in ("adam", "adamw"):
        cls = optim.Adam if name == "adam" else optim.AdamW
        return cls(groups, lr=lr, betas=betas, eps=hp.get("eps", 1e-8), foreach=False)
    if name in ("nadam", "nadamw"):
        return optim.NAdam(
            groups,
            lr=lr,
            betas=betas,
            eps=hp.get("eps", 1e-8),
            momentum_decay=1e6,
            decoupled_weight_decay=name == "nadamw",
            foreach=False,
        )
    if name == "adagrad":
        return optim.Adagrad(
            groups,
            lr=lr,
            initial_accumulator_value=hp.get("initial_accumulator_value", 0.1),
            eps=hp["eps"],
            foreach=False,
        )
    if name == "rmsprop":
        return optim.RMSprop(
            groups,
            lr=lr,
            alpha=hp.get("decay", 0.9),
            eps=hp.get("eps", 1e-8),
            centered=hp.get("centered", False),
            momentum=hp.get("momentum") or 0.0,
            foreach=False,
        )
    if name == "radam":
        return optim.RAdam(groups, lr=lr, betas=betas, eps=hp["eps"], foreach=False)
    if name in ("adamax", "adamaxw"):
        return optim.Adamax(
            groups, lr=lr, betas=betas, eps=hp.get("eps", 1e-8), foreach=False
        )
    raise ValueError(name)


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    options = ("weight_decay", "mask", "apply_to", "conv_only")
    return (
        {k: v for k, v in kwargs.items() if k in options},
        {k: v for k, v in kwargs.items() if k not in options},
    )


_TRAJECTORIES: dict[str, list[dict[str, np.ndarray]]] = {}


def run_torch(
    name: str, kwargs: dict[str, Any], lr: float
) -> list[dict[str, np.ndarray]]:
    """The torch trajectory, as Flax-layout float64 params after each step.

    Computed once per case and shared by the two tests that use it.
    """
    key = f"{name}{sorted(kwargs.items())}{lr}"
    if key not in _TRAJECTORIES:
        _TRAJECTORIES[key] = _run_torch(name, kwargs, lr)
    return _TRAJECTORIES[key]


def _run_torch(
    name: str, kwargs: dict[str, Any], lr: float
) -> list[dict[str, np.ndarray]]:
    options, hp = _split(kwargs)
    apply_to = options.get("apply_to", "gradient")
    conv_only = options.get("conv_only", False)
    mask = options.get("mask")
    wd = {
        k: options.get("weight_decay", 0.0) if mask is None or mask[k] else 0.0
        for k in PARAM_SHAPES
    }
    coupled = name in COUPLED
    # Decay added to the gradient by hand (before GC), by torch, or after the
    # step by hand (the decoupled recipes torch has no class for).
    by_hand_before = coupled and apply_to == "gradient"
    by_hand_after = name in ("sgdw", "adamaxw")
    in_torch = (coupled and apply_to == "update") or name in ("adamw", "nadamw")
    params = {
        k: torch.nn.Parameter(torch.from_numpy(to_torch_layout(v)))
        for k, v in init_params().items()
    }
    opt = _torch_optimizer(
        name,
        list(params.values()),
        lr,
        [wd[k] if in_torch else 0.0 for k in params],
        hp,
    )
    trajectory = []
    for t in range(STEPS):
        flax_view = {k: to_flax_layout(p.detach().numpy()) for k, p in params.items()}
        grads = problem_grads(flax_view, t)
        with torch.no_grad():
            old = {k: p.detach().clone() for k, p in params.items()}
            for k, p in params.items():
                g = torch.from_numpy(to_torch_layout(grads[k]))
                if by_hand_before:
                    g = g + wd[k] * p
                if apply_to == "gradient":
                    g = torch_gc(g, conv_only=conv_only)
                p.grad = g
            opt.step()
            for k, p in params.items():
                if by_hand_after:
                    p -= lr * wd[k] * old[k]
                if apply_to == "update":
                    p.copy_(old[k] + torch_gc(p - old[k], conv_only=conv_only))
        trajectory.append(
            {k: to_flax_layout(p.detach().numpy()).copy() for k, p in params.items()}
        )
    return trajectory


def _assert_same(got, want, label):
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_leaves_close(g, w, label=label, step=t + 1, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_recipe_matches_torch(name, kwargs):
    lr = _LR.get(name, 0.01)
    want = run_torch(name, kwargs, lr)
    nested = {k: nest(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    tx = getattr(optax_gc, name)(lr, **nested)
    got = []
    with enable_x64():
        params = nest({k: jnp.asarray(v) for k, v in init_params().items()})
        state = tx.init(params)
        for t in range(STEPS):
            flat = {k: np.asarray(v) for k, v in flatten(params).items()}
            grads = nest({k: jnp.asarray(v) for k, v in problem_grads(flat, t).items()})
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            got.append({k: np.asarray(v) for k, v in flatten(params).items()})
    _assert_same(got, want, f"optax_gc.{name}({kwargs}) vs torch")


@pytest.mark.parametrize(("name", "kwargs"), CASES)
def test_reference_matches_torch(name, kwargs):
    """The NumPy reference test_recipes.py relies on agrees with torch too."""
    lr = _LR.get(name, 0.01)
    want = run_torch(name, kwargs, lr)
    options, hp = _split(kwargs)
    params = init_params()
    reference = ReferenceRecipe(
        name,
        lr,
        weight_decay=options.get("weight_decay", 0.0),
        weight_decay_mask=options.get("mask"),
        apply_to=options.get("apply_to", "gradient"),
        gc_axes=flax_gc_axes(params, conv_only=options.get("conv_only", False)),
        **hp,
    )
    state, got = reference.init(params), []
    for t in range(STEPS):
        params, state, _ = reference.step(params, problem_grads(params, t), state)
        got.append(params)
    _assert_same(got, want, f"reference {name}({kwargs}) vs torch")


def test_torch_gc_is_the_flax_gc():
    """The layout round trip: GC over dims 1.. in PyTorch layout is GC over
    every axis but the last in Flax layout."""
    rng = np.random.default_rng(0)
    for shape in PARAM_SHAPES.values():
        g = rng.normal(size=shape)
        via_torch = to_flax_layout(
            torch_gc(torch.from_numpy(to_torch_layout(g))).numpy()
        )
        axes = flax_gc_axes({"x": g})["x"]
        flax = g if axes is None else g - g.mean(axis=axes, keepdims=True)
        np.testing.assert_allclose(via_torch, flax, rtol=1e-14, atol=1e-15)
