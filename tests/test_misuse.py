"""No silent wrong answers: common misuse gets the right result or an error
at construction that names the argument (and the leaf, with its shape).

Each test here failed on optax-gc 0.1 (a silent wrong result or an opaque
error from inside JAX).
"""

import inspect
import re
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import apply
from reference_optimizers import COUPLED, DECOUPLED, RECIPES

import optax_gc


def _params() -> dict[str, Any]:
    # Not constant per unit: the centralized L2 term of a constant kernel is 0.
    rng = np.random.default_rng(1)

    def uniform(*shape: int) -> jax.Array:
        return jnp.asarray(rng.uniform(0.5, 1.5, size=shape), jnp.float32)

    return {
        "conv": {"kernel": uniform(3, 3, 2, 4), "bias": uniform(4)},
        "dense": {"kernel": uniform(6, 3), "bias": uniform(3)},
        "norm": {"scale": uniform(3)},
    }


def _grads() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), _params()
    )


KERNELS_ONLY = {
    "conv": {"kernel": True, "bias": False},
    "dense": {"kernel": True, "bias": False},
    "norm": {"scale": False},
}


def _update(tx: optax.GradientTransformation, grads: Any = None) -> Any:
    params = _params()
    grads = _grads() if grads is None else grads
    return tx.update(grads, tx.init(params), params)[0]


def _close(a: Any, b: Any, **kw: Any) -> None:
    for (path, x), y in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_allclose(
            x, y, rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path), **kw
        )


# --- 1. Recipes are drop-in for their optax namesakes ----------------------


@pytest.mark.standard_promotion
def test_adamw_mask_is_the_decay_mask_as_in_optax():
    """The standard idiom: biases and norms are not decayed; GC is on."""
    ours = optax_gc.adamw(1e-2, weight_decay=0.5, mask=KERNELS_ONLY)
    theirs = optax.chain(
        optax_gc.centralize(), optax.adamw(1e-2, weight_decay=0.5, mask=KERNELS_ONLY)
    )
    _close(_update(ours), _update(theirs))
    # Zero gradients: only the decay moves, and only the kernels.
    zero = jax.tree.map(jnp.zeros_like, _params())
    moved = _update(ours, zero)
    assert float(jnp.abs(moved["dense"]["kernel"]).max()) > 0
    for leaf in (moved["dense"]["bias"], moved["conv"]["bias"], moved["norm"]["scale"]):
        np.testing.assert_array_equal(leaf, 0.0)


@pytest.mark.standard_promotion
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_mask_is_the_decay_mask(name):
    """With zero gradients the update is the decay alone: exactly the leaves
    ``mask`` marks move, and GC is still on (``gc_mask`` is GC's)."""
    tx = getattr(optax_gc, name)(1e-2, weight_decay=0.5, mask=KERNELS_ONLY)
    zero = jax.tree.map(jnp.zeros_like, _params())
    moved = _update(tx, zero)
    for path, leaf in jax.tree_util.tree_flatten_with_path(moved)[0]:
        decays = path[-1].key == "kernel"
        assert (float(jnp.abs(leaf).max()) > 0) == decays, (name, path)
    # The kernels' gradient (or step) is centralized: not plain optax.
    plain = getattr(optax_gc, name)(
        1e-2, gc_mask=jax.tree.map(lambda _: False, KERNELS_ONLY)
    )
    gc = getattr(optax_gc, name)(1e-2)
    d = _update(gc)["dense"]["kernel"] - _update(plain)["dense"]["kernel"]
    assert float(jnp.abs(d).max()) > 1e-6, name


def test_gc_mask_is_gcs_mask():
    gc_mask = {"conv": True, "dense": False, "norm": False}
    u = _update(optax_gc.sgd(1.0, gc_mask=gc_mask))
    g = _grads()
    np.testing.assert_allclose(u["dense"]["kernel"], -g["dense"]["kernel"], rtol=1e-6)
    col = u["conv"]["kernel"].sum(axis=(0, 1, 2))
    np.testing.assert_allclose(col, 0.0, atol=1e-5)


def test_gc_mask_errors_name_gc_mask_and_the_leaf():
    tx = optax_gc.sgd(0.1, gc_mask={"conv": True, "dense": True})
    with pytest.raises(ValueError, match=r"gc_mask tree does not match.*\['norm'\]"):
        tx.init(_params())


def test_decay_mask_that_does_not_fit_names_the_leaf():
    bad = {"conv": True, "dense": {"kernel": True}}  # no dense bias, no norm
    # GC's own mask fits: the error is the decay mask's.
    tx = optax_gc.adamw(1e-3, weight_decay=0.1, mask=bad, gc_mask=KERNELS_ONLY)
    with pytest.raises(
        ValueError,
        match=r"The mask tree does not match the params: it has no entry for leaf "
        r"\['dense'\]\['bias'\] of shape \(3,\)",
    ):
        tx.init(_params())
    # Also when the decay is zero: the mask is still checked at init.
    with pytest.raises(ValueError, match="mask tree does not match"):
        optax_gc.adamw(1e-3, weight_decay=0.0, mask=bad).init(_params())


@pytest.mark.parametrize("name", RECIPES)
def test_weight_decay_mask_is_a_deprecated_alias(name):
    with pytest.warns(DeprecationWarning, match="weight_decay_mask is deprecated"):
        old = getattr(optax_gc, name)(
            1e-2, weight_decay=0.5, weight_decay_mask=KERNELS_ONLY
        )
    new = getattr(optax_gc, name)(1e-2, weight_decay=0.5, mask=KERNELS_ONLY)
    with jax.numpy_dtype_promotion("standard"):
        _close(_update(old), _update(new))
    with pytest.raises(TypeError, match="both mask and weight_decay_mask"):
        getattr(optax_gc, name)(
            1e-2, weight_decay=0.5, mask=KERNELS_ONLY, weight_decay_mask=KERNELS_ONLY
        )


@pytest.mark.parametrize("name", COUPLED)
def test_mask_without_decay_is_refused_where_optax_has_no_decay(name):
    """0.1's ``optax_gc.adam(lr, mask=gc_tree)`` meant GC's mask; now it would
    be a decay mask for no decay, so it is refused, pointing to gc_mask."""
    with pytest.raises(ValueError, match=r"mask is the weight-decay mask.*gc_mask="):
        getattr(optax_gc, name)(1e-2, mask=KERNELS_ONLY)


@pytest.mark.parametrize("name", ["adamw", "lamb", "lion", "adamaxw", "nadamw"])
def test_mask_with_zero_decay_is_fine_where_optax_takes_it(name):
    getattr(optax_gc, name)(1e-2, weight_decay=0.0, mask=KERNELS_ONLY).init(_params())


def _structure(tx: optax.GradientTransformation) -> Any:
    return jax.tree.structure(tx.init(_params()))


@pytest.mark.parametrize("name", RECIPES)
def test_state_structure_does_not_depend_on_hyperparameter_values(name):
    """Same treedef (so a checkpoint restores, opt_state[i] is the same
    stage) for any weight_decay value (0 included), masks, apply_to and GC
    options."""
    make = getattr(optax_gc, name)
    base = _structure(make(1e-2, weight_decay=0.0))
    variants = [
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "mask": KERNELS_ONLY},
        {"weight_decay": 0.0, "gc_mask": {"conv": True, "dense": False, "norm": False}},
        {"weight_decay": 0.0, "apply_to": "update"},
        {"weight_decay": 0.1, "apply_to": "update", "conv_only": True},
        {"weight_decay": 0.0, "layout": "channels_first"},
        {
            "weight_decay": 0.0,
            "reduction_axes": optax_gc.default_reduction_axes(_params()),
        },
        {"weight_decay": jnp.asarray(0.0)},
    ]
    for kwargs in variants:
        assert _structure(make(1e-2, **kwargs)) == base, kwargs
    # The default decay too (1e-4 for adamw, 0 for adam, ...).
    assert _structure(make(1e-2)) == base


@pytest.mark.standard_promotion
def test_checkpoint_saved_with_one_decay_restores_with_another():
    params, grads = _params(), _grads()
    first = optax_gc.adam(1e-2, weight_decay=0.0)
    state = first.init(params)
    _, state = first.update(grads, state, params)
    second = optax_gc.adam(1e-2, weight_decay=0.1)
    restored = jax.tree.unflatten(
        jax.tree.structure(second.init(params)), jax.tree.leaves(state)
    )
    second.update(grads, restored, params)  # runs on the restored moments
    mu = optax.tree_utils.tree_get(restored, "mu")
    _close(mu, optax.tree_utils.tree_get(state, "mu"))


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "lamb"])
def test_update_without_params_works_without_decay(name):
    """As optax.adam(...).update(grads, state): no params needed at zero decay."""
    tx = getattr(optax_gc, name)(1e-2, weight_decay=0.0)
    with jax.numpy_dtype_promotion("standard"):
        tx.update(_grads(), tx.init(_params()))


# --- 2. Wrong arguments fail at construction -------------------------------


@pytest.mark.parametrize("bad", ["no", 2, 1.0, None, "False"])
def test_conv_only_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="conv_only must be True or False"):
        optax_gc.centralize(conv_only=bad)
    for name in RECIPES:
        with pytest.raises(TypeError, match="conv_only"):
            getattr(optax_gc, name)(1e-2, conv_only=bad)


BAD_MASK_VALUES = [
    ("yes", "A string is not a bool"),
    (1.0, r"Mask values are bools"),
    (1, r"Mask values are bools"),
    (jnp.ones((3, 2), bool), r"per-element mask \(shape \(3, 2\)\)"),
    (np.ones(4, bool), r"per-element mask \(shape \(4,\)\)"),
]


@pytest.mark.parametrize(("value", "hint"), BAD_MASK_VALUES)
def test_mask_values_must_be_bools_at_construction(value, hint):
    mask = {"conv": True, "dense": value, "norm": False}
    with pytest.raises(
        ValueError, match=rf"mask gives .* to its entry \['dense'\].*{hint}"
    ):
        optax_gc.centralize(mask=mask)
    with pytest.raises(
        ValueError, match=rf"gc_mask gives .* to its entry \['dense'\].*{hint}"
    ):
        optax_gc.sgd(0.1, gc_mask=mask)
    with pytest.raises(
        ValueError, match=rf"mask gives .* to its entry \['dense'\].*{hint}"
    ):
        optax_gc.adamw(0.1, mask=mask)


@pytest.mark.parametrize(("value", "hint"), BAD_MASK_VALUES)
def test_mask_values_from_a_callable_name_the_leaf_and_shape(value, hint):
    def mask(params):
        return {"conv": True, "dense": {"kernel": value, "bias": False}, "norm": False}

    with pytest.raises(
        ValueError,
        match=rf"mask gives .* to leaf \['dense'\]\['kernel'\] of shape \(6, 3\).*{hint}",
    ):
        apply(optax_gc.centralize(mask=mask), _grads())


def test_concrete_bool_scalars_are_bools():
    mask = {"conv": np.bool_(True), "dense": jnp.asarray(False), "norm": False}
    u = apply(optax_gc.centralize(mask=mask), _grads())
    np.testing.assert_array_equal(u["dense"]["kernel"], _grads()["dense"]["kernel"])


def test_traced_mask_says_static():
    def build(flag):
        return apply(
            optax_gc.centralize(mask={"conv": flag, "dense": True, "norm": False}),
            _grads(),
        )

    with pytest.raises(ValueError, match=r"traced value.*static_args"):
        jax.jit(build)(True)
    with pytest.raises(ValueError, match=r"mask is an array.*static_args"):
        jax.jit(lambda m: optax_gc.centralize(mask=m))(True)


def test_traced_axes_say_static():
    def build(axis):
        tx = optax_gc.centralize(reduction_axes={"k": (axis,)})
        return apply(tx, {"k": jnp.ones((3, 2))})

    with pytest.raises(
        ValueError,
        match=r"leaf \['k'\] of shape \(3, 2\).*static Python ints.*static_args",
    ):
        jax.jit(build)(0)


def _kernels_fn(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


@pytest.mark.parametrize(
    ("name", "option", "kwargs"),
    [
        ("sgd", "gc_mask", {}),
        ("adamw", "mask", {"weight_decay": 0.1}),
        ("adamw", "gc_mask", {}),
    ],
)
def test_inject_hyperparams_callable_mask_needs_static_args(name, option, kwargs):
    """Without static_args the callable is taken for a schedule and called
    with the step count: that must not silently turn a stage on or off."""
    factory = getattr(optax_gc, name)
    tx = optax.inject_hyperparams(factory)(
        learning_rate=1.0, **{option: _kernels_fn}, **kwargs
    )
    with pytest.raises(ValueError, match=rf"{option}=.*static_args=\('{option}',\)"):
        tx.init(_params())


@pytest.mark.standard_promotion
def test_inject_hyperparams_with_static_args_centralizes():
    tx = optax.inject_hyperparams(optax_gc.sgd, static_args=("gc_mask",))(
        learning_rate=1.0, gc_mask=_kernels_fn
    )
    u = _update(tx)
    np.testing.assert_allclose(u["dense"]["kernel"].sum(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(u["dense"]["bias"], -_grads()["dense"]["bias"])


@pytest.mark.parametrize("bad", [True, False])
def test_recipe_mask_of_one_bool_is_refused(bad):
    with pytest.raises(ValueError, match="one bool for the whole tree"):
        optax_gc.sgd(0.1, gc_mask=bad)
    with pytest.raises(ValueError, match="one bool for the whole tree"):
        optax_gc.adamw(0.1, mask=bad)


def _hyperparameter_cases():
    cases = []
    for name in RECIPES:
        cases += [
            (name, {"learning_rate": None}, TypeError, "learning_rate is None"),
            (
                name,
                {"learning_rate": -0.1},
                ValueError,
                r"learning_rate=-0.1 is out of range",
            ),
            (
                name,
                {"learning_rate": "0.1"},
                TypeError,
                "learning_rate must be a number",
            ),
            (name, {"learning_rate": float("nan")}, ValueError, "learning_rate=nan"),
            (name, {"weight_decay": -1e-4}, ValueError, "weight_decay=-0.0001"),
        ]
        params = inspect.signature(getattr(optax_gc, name)).parameters
        for beta in ("b1", "b2", "decay"):
            if beta in params:
                for bad in (1.0, -0.1, 1.5):
                    cases.append(
                        (
                            name,
                            {beta: bad},
                            ValueError,
                            rf"{beta}={bad} is out of range.*\[0, 1\)",
                        )
                    )
        for eps in ("eps", "eps_root"):
            if eps in params:
                cases.append(
                    (name, {eps: -1e-8}, ValueError, rf"{eps}=-1e-08 is out of range")
                )
        if "momentum" in params:
            cases.append(
                (name, {"momentum": -0.9}, ValueError, "momentum=-0.9 is out of range")
            )
            cases.append(
                (name, {"nesterov": True}, ValueError, "nesterov=True needs a momentum")
            )
            cases.append(
                (
                    name,
                    {"nesterov": True, "momentum": 0.0},
                    ValueError,
                    "nesterov=True needs a momentum",
                )
            )
    return [
        pytest.param(*c, id=f"{c[0]}-{'-'.join(map(str, c[1].items()))}") for c in cases
    ]


@pytest.mark.parametrize(("name", "kwargs", "error", "match"), _hyperparameter_cases())
def test_hyperparameters_are_checked_as_the_authors_and_pytorch_do(
    name, kwargs, error, match
):
    kwargs = {"learning_rate": 0.1, **kwargs}
    with pytest.raises(error, match=match):
        getattr(optax_gc, name)(**kwargs)


@pytest.mark.parametrize("name", RECIPES)
def test_schedules_callables_and_arrays_are_accepted_unchecked(name):
    schedule = optax.linear_schedule(0.1, 0.0, 10)
    getattr(optax_gc, name)(schedule)
    getattr(optax_gc, name)(jnp.asarray(0.1), weight_decay=jnp.asarray(0.0))
    getattr(optax_gc, name)(
        0.1, weight_decay=optax.constant_schedule(0.0) if name in DECOUPLED else 0.0
    )
    getattr(optax_gc, name)(np.float32(0.1))
    getattr(optax_gc, name)(0)  # a zero learning rate is a valid (frozen) run


def test_checks_leave_valid_edge_values_alone():
    optax_gc.sgd(0.1, momentum=0.0)
    optax_gc.adam(0.1, b1=0.0, b2=0.0, eps=0.0)
    optax_gc.rmsprop(0.1, decay=0.0, momentum=0.9, nesterov=True)


# --- optax_gc.flax ---------------------------------------------------------


def test_flax_rules_must_be_a_mapping():
    flax_mod = pytest.importorskip("optax_gc.flax")
    from flax import nnx

    layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    for bad in ([(nnx.Linear, lambda m: {})], "rules", 3):
        with pytest.raises(TypeError, match=r"rules must be a mapping"):
            flax_mod.fan_in_axes(layer, rules=bad)


def test_flax_rule_naming_a_missing_parameter_raises():
    flax_mod = pytest.importorskip("optax_gc.flax")
    import flax.linen as nn
    from flax import nnx

    layer = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError,
        match=r"'kernal', which the layer has no parameter of.*'bias', 'kernel'",
    ):
        flax_mod.fan_in_axes(layer, rules={nnx.Linear: lambda m: {"kernal": (-2,)}})
    with pytest.raises(
        ValueError, match=r"'kernal', which the layer has no parameter of"
    ):
        flax_mod.linen_fan_in_axes(
            nn.Dense(3),
            jnp.zeros((1, 2)),
            rules={nn.Dense: lambda m: {"kernal": (-2,)}},
        )


def test_einsum_messages_count_an_ellipsis_as_one_token():
    flax_mod = pytest.importorskip("optax_gc.flax")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "'...dk', 3 tokens (2 axes and an ellipsis), which fits a kernel of rank 2 or more, but the kernel has rank 1"
        ),
    ):
        flax_mod.einsum_fan_in_axes("b...d,...dk->bk", 1)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "'dk', 2 tokens, which fits a kernel of rank 2, but the kernel has rank 3"
        ),
    ):
        flax_mod.einsum_fan_in_axes("bd,dk->bk", 3)


def test_no_warning_from_valid_construction():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in RECIPES:
            getattr(optax_gc, name)(
                1e-3, weight_decay=0.1, mask=KERNELS_ONLY, gc_mask=KERNELS_ONLY
            )


# --- Found in review: valid inputs that must keep working -------------------


@pytest.mark.standard_promotion
def test_masks_over_none_leaves_work_as_in_optax():
    """Equinox-style params with None leaves: a mask built by tree.map has
    None there too, and optax accepts it."""
    params = {"w": jnp.ones((3, 2)), "b": None}
    mask = jax.tree.map(lambda x: x.ndim > 1, params)
    assert mask == {"w": True, "b": None}
    grads = {"w": jnp.arange(6.0).reshape(3, 2), "b": None}
    for tx in (
        optax_gc.adamw(1e-3, mask=mask),
        optax_gc.adamw(1e-3, gc_mask=mask),
        optax_gc.centralize(mask=mask),
    ):
        tx.update(grads, tx.init(params), params)
    u = apply(optax_gc.centralize(mask=mask), grads, params)
    np.testing.assert_allclose(u["w"].sum(axis=0), 0.0, atol=1e-6)


def test_tuple_of_bools_is_a_mask():
    params = (jnp.ones((3, 2)), jnp.ones(2))
    grads = (jnp.arange(6.0).reshape(3, 2), jnp.ones(2))
    u = apply(optax_gc.centralize(mask=(True, False)), grads, params)
    np.testing.assert_allclose(u[0].sum(axis=0), 0.0, atol=1e-6)
    optax_gc.adamw(1e-3, weight_decay=0.1, mask=(True, False)).init(params)


def test_numpy_zero_decay_needs_no_params_and_numpy_bool_mask_is_refused():
    tx = optax_gc.sgd(1e-3, weight_decay=np.float32(0.0))
    tx.update(_grads(), tx.init(_params()))
    with pytest.raises(ValueError, match="mask is the weight-decay mask"):
        optax_gc.sgd(1e-3, weight_decay=np.float32(0.0), mask=KERNELS_ONLY)
    with pytest.raises(ValueError, match="one bool for the whole tree"):
        optax_gc.sgd(1e-3, gc_mask=np.bool_(True))


@pytest.mark.standard_promotion
def test_authors_adamw_in_bfloat16_moves_the_params():
    """0.999 is 1.0 in bfloat16: the bias-corrected step size is computed in
    float32, so the step is not zero."""
    params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
    grads = {"w": jnp.arange(6.0).reshape(3, 2).astype(jnp.bfloat16)}
    for authors in (False, True):
        tx = optax_gc.adamw(1e-3, weight_decay=1e-2, authors_adamw=authors)
        u = tx.update(grads, tx.init(params), params)[0]["w"]
        assert u.dtype == jnp.bfloat16
        assert float(jnp.abs(u.astype(jnp.float32)).max()) > 5e-4, authors


@pytest.mark.standard_promotion
def test_authors_adamw_under_inject_hyperparams():
    tx = optax.inject_hyperparams(optax_gc.adamw)(
        learning_rate=1e-3, weight_decay=1e-2, authors_adamw=True
    )
    params = _params()
    state = tx.init(params)
    jax.jit(tx.update)(_grads(), state, params)
    with pytest.raises(ValueError, match="no eps_root"):
        optax.inject_hyperparams(optax_gc.adamw)(
            learning_rate=1e-3, eps_root=1e-8, authors_adamw=True
        ).init(params)
