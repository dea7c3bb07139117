"""Hand-computed values, leaf handling, dtypes and errors of centralize()."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import apply, enable_x64, random_tree, reference_gc

import optax_gc

# --- hand-computed values -------------------------------------------------


def test_dense_channels_last_by_hand():
    # Flax Dense kernel (in=2, out=3): one mean per column (output unit).
    g = jnp.array([[1.0, 2.0, 10.0], [3.0, 6.0, 10.0]])
    out = apply(optax_gc.centralize(), g)
    chex.assert_trees_all_close(
        out, jnp.array([[-1.0, -2.0, 0.0], [1.0, 2.0, 0.0]]), atol=0
    )


def test_dense_channels_first_by_hand():
    # PyTorch Linear weight (out=2, in=3): one mean per row (output unit).
    g = jnp.array([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    out = apply(optax_gc.centralize(layout="channels_first"), g)
    chex.assert_trees_all_close(
        out, jnp.array([[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]]), atol=0
    )


def test_conv_channels_last_by_hand():
    # Flax Conv kernel (kh=2, kw=1, in=2, out=2): output 0 has fan-in values
    # 1, 2, 3, 6 (mean 3); output 1 has 4, 4, 4, 8 (mean 5).
    g = jnp.zeros((2, 1, 2, 2))
    g = g.at[..., 0].set(jnp.array([[[1.0, 2.0]], [[3.0, 6.0]]]))
    g = g.at[..., 1].set(jnp.array([[[4.0, 4.0]], [[4.0, 8.0]]]))
    out = apply(optax_gc.centralize(), g)
    np.testing.assert_array_equal(out[..., 0].ravel(), [-2.0, -1.0, 0.0, 3.0])
    np.testing.assert_array_equal(out[..., 1].ravel(), [-1.0, -1.0, -1.0, 3.0])


def test_conv_channels_first_by_hand():
    # PyTorch Conv2d weight (out=2, in=1, kh=2, kw=2).
    g = jnp.array([[[[1.0, 2.0], [3.0, 6.0]]], [[[4.0, 4.0], [4.0, 8.0]]]])
    out = apply(optax_gc.centralize(layout="channels_first"), g)
    np.testing.assert_array_equal(out[0].ravel(), [-2.0, -1.0, 0.0, 3.0])
    np.testing.assert_array_equal(out[1].ravel(), [-1.0, -1.0, -1.0, 3.0])


def test_default_matches_numpy_reference_on_a_tree():
    tree = random_tree()
    out = apply(optax_gc.centralize(), tree)
    for path, g in jax.tree_util.tree_leaves_with_path(tree):
        got = out
        for key in path:
            got = got[key.key]
        want = (
            np.asarray(g) if g.ndim < 2 else reference_gc(g, tuple(range(g.ndim - 1)))
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_rank_one_and_zero_untouched(layout):
    tree = {"bias": jnp.arange(4.0), "scale": jnp.ones(3), "t": jnp.array(2.0)}
    out = apply(optax_gc.centralize(layout=layout), tree)
    for key in tree:
        assert out[key] is tree[key]


def test_dense_one_output_is_not_zeroed():
    # Dense(1) head: channels_last centralizes its single column; the
    # PyTorch rule (optax.centralize) would reduce each 1-element row to 0.
    g = jnp.array([[1.0], [2.0], [6.0]])
    np.testing.assert_array_equal(apply(optax_gc.centralize(), g), [[-2], [-1], [3]])
    np.testing.assert_array_equal(apply(optax.centralize(), g), jnp.zeros((3, 1)))


# --- conv_only ------------------------------------------------------------


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_conv_only_touches_rank_four_only(layout):
    tree = random_tree()
    out = apply(optax_gc.centralize(conv_only=True, layout=layout), tree)
    axes = (0, 1, 2) if layout == "channels_last" else (1, 2, 3)
    np.testing.assert_allclose(
        out["conv"]["kernel"], reference_gc(tree["conv"]["kernel"], axes), atol=1e-6
    )
    for name in ("conv1d", "dense", "head"):
        assert out[name]["kernel"] is tree[name]["kernel"]


# --- reduction_axes -------------------------------------------------------


def test_reduction_axes_attention_kernel_by_hand():
    # q kernel (in=2, heads=1, head_dim=2): fan-in is axis 0 alone.
    g = jnp.array([[[1.0, 10.0]], [[3.0, 20.0]]])
    out = apply(optax_gc.centralize(reduction_axes=(0,)), g)
    np.testing.assert_array_equal(out, [[[-1.0, -5.0]], [[1.0, 5.0]]])
    # Two heads: each (head, head_dim) unit is centred on its own.
    g2 = jnp.concatenate([g, g + 100.0], axis=1)
    out2 = apply(optax_gc.centralize(reduction_axes=(0,)), g2)
    np.testing.assert_array_equal(out2[:, 0], out[:, 0])
    np.testing.assert_array_equal(out2[:, 1], out[:, 0])
    # The layout rule would wrongly mix the heads: mean over axes (0, 1).
    mixed = apply(optax_gc.centralize(), g2)
    np.testing.assert_array_equal(mixed[:, 1], out[:, 0] + 50.0)


def test_reduction_axes_out_kernel_two_fan_in_axes():
    rng = np.random.default_rng(1)
    g = jnp.asarray(rng.normal(size=(3, 4, 5)).astype(np.float32))
    out = apply(optax_gc.centralize(reduction_axes={"o": (0, 1)}), {"o": g})["o"]
    np.testing.assert_allclose(out, reference_gc(g, (0, 1)), atol=1e-6)
    np.testing.assert_allclose(out.mean(axis=(0, 1)), 0.0, atol=1e-6)


def test_reduction_axes_tree_callable_negative_and_int():
    tree = random_tree()
    spec = {
        "conv": {"kernel": (-4, -3, -2), "bias": None},
        "conv1d": {"kernel": 0},  # an int is one axis
        "dense": None,  # a prefix: the whole subtree is left alone
        "head": {"kernel": (0,)},
        "norm": {"scale": None},
    }
    out = apply(optax_gc.centralize(reduction_axes=spec), tree)
    by_callable = apply(optax_gc.centralize(reduction_axes=lambda u: spec), tree)
    chex.assert_trees_all_equal(out, by_callable)
    np.testing.assert_allclose(
        out["conv"]["kernel"],
        reference_gc(tree["conv"]["kernel"], (0, 1, 2)),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        out["conv1d"]["kernel"], reference_gc(tree["conv1d"]["kernel"], (0,)), atol=1e-6
    )
    assert out["dense"]["kernel"] is tree["dense"]["kernel"]
    assert out["dense"]["bias"] is tree["dense"]["bias"]
    assert out["conv"]["bias"] is tree["conv"]["bias"]


def test_reduction_axes_callable_receives_the_updates():
    tree = random_tree()
    seen = []

    def fan_in(updates):
        seen.append(jax.tree.map(lambda g: g.shape, updates))
        return jax.tree.map(
            lambda g: tuple(range(g.ndim - 1)) if g.ndim > 1 else None, updates
        )

    out = apply(optax_gc.centralize(reduction_axes=fan_in), tree)
    assert seen == [jax.tree.map(lambda g: g.shape, tree)]
    chex.assert_trees_all_equal(out, apply(optax_gc.centralize(), tree))
    # Under a mask, the callable sees the masked-out leaves as MaskedNode.
    seen.clear()
    mask = {"conv": False, "conv1d": True, "dense": True, "head": True, "norm": True}
    out = apply(optax_gc.centralize(reduction_axes=fan_in, mask=mask), tree)
    assert seen[-1]["conv"] == {
        "kernel": optax.MaskedNode(),
        "bias": optax.MaskedNode(),
    }
    assert out["conv"]["kernel"] is tree["conv"]["kernel"]
    np.testing.assert_allclose(out["dense"]["kernel"].mean(0), 0.0, atol=1e-6)


def test_reduction_axes_on_rank_one_is_honoured():
    # Explicit axes are the user's decision, even for a vector.
    out = apply(optax_gc.centralize(reduction_axes=(0,)), jnp.array([1.0, 3.0]))
    np.testing.assert_array_equal(out, [-1.0, 1.0])


def test_reduction_axes_wins_over_layout():
    tree = random_tree()
    spec = optax_gc.default_reduction_axes(tree)
    a = apply(optax_gc.centralize(reduction_axes=spec), tree)
    b = apply(optax_gc.centralize(reduction_axes=spec, layout="channels_first"), tree)
    chex.assert_trees_all_equal(a, b)


def test_reduction_axes_with_conv_only_filters_by_rank():
    tree = random_tree()
    spec = optax_gc.default_reduction_axes(tree)
    out = apply(optax_gc.centralize(reduction_axes=spec, conv_only=True), tree)
    chex.assert_trees_all_equal(out, apply(optax_gc.centralize(conv_only=True), tree))
    assert out["dense"]["kernel"] is tree["dense"]["kernel"]


@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
@pytest.mark.parametrize("conv_only", [False, True])
def test_default_reduction_axes_is_what_centralize_uses(layout, conv_only):
    tree = random_tree()
    spec = optax_gc.default_reduction_axes(tree, layout=layout, conv_only=conv_only)
    chex.assert_trees_all_equal(
        apply(optax_gc.centralize(reduction_axes=spec), tree),
        apply(optax_gc.centralize(layout=layout, conv_only=conv_only), tree),
    )


def test_default_reduction_axes_skips_non_float_and_empty():
    tree = {
        "i": jnp.ones((2, 2), jnp.int32),
        "e": jnp.ones((0, 3)),
        "k": jnp.ones((2, 3)),
    }
    assert optax_gc.default_reduction_axes(tree) == {"i": None, "e": None, "k": (0,)}


# --- mask -----------------------------------------------------------------


def test_mask_tree_callable_and_prefix_match_optax_masked():
    tree = random_tree()
    mask = jax.tree.map(lambda _: False, tree)
    mask["dense"]["kernel"] = True
    mask["conv"]["kernel"] = True
    prefix = {
        "conv": True,
        "conv1d": False,
        "dense": True,
        "head": False,
        "norm": False,
    }
    for m in (mask, lambda p: mask, prefix):
        got = apply(optax_gc.centralize(mask=m), tree)
        want = apply(optax.masked(optax_gc.centralize(), m), tree)
        chex.assert_trees_all_equal(got, want)
        assert got["head"]["kernel"] is tree["head"]["kernel"]
        assert got["conv1d"]["kernel"] is tree["conv1d"]["kernel"]
        np.testing.assert_allclose(got["dense"]["kernel"].mean(0), 0.0, atol=1e-6)


def test_mask_composes_with_conv_only_and_reduction_axes():
    tree = random_tree()
    mask = {"conv": False, "conv1d": True, "dense": True, "head": True, "norm": True}
    out = apply(optax_gc.centralize(mask=mask, conv_only=True), tree)
    chex.assert_trees_all_equal(out, tree)  # the only conv kernel is masked
    spec = {
        "conv": None,
        "conv1d": None,
        "dense": {"kernel": (0,), "bias": None},
        "head": None,
        "norm": None,
    }
    out = apply(
        optax_gc.centralize(mask={**mask, "dense": False}, reduction_axes=spec), tree
    )
    chex.assert_trees_all_equal(out, tree)


# --- what passes through --------------------------------------------------


def test_non_float_none_masked_node_scalars_and_empty_untouched():
    f0 = np.zeros((2, 3), dtype=jax.dtypes.float0)
    tree = {
        "int": jnp.arange(6, dtype=jnp.int32).reshape(2, 3),
        "bool": jnp.ones((2, 3), bool),
        "float0": f0,
        "none": None,
        "masked": optax.MaskedNode(),
        "py": 3.0,
        "empty": jnp.zeros((0, 3)),
        "no_outputs": jnp.zeros((4, 0)),
        "kernel": jnp.array([[1.0, 2.0], [3.0, 4.0]]),
    }
    for tx in (
        optax_gc.centralize(),
        optax_gc.centralize(layout="channels_first"),
        # Explicit axes for every array (a scalar has none to give).
        optax_gc.centralize(
            reduction_axes=lambda u: jax.tree.map(
                lambda g: (0,) if np.ndim(g) else None, u
            )
        ),
    ):
        out = apply(tx, tree)
        for key in tree:
            if key == "masked":  # an empty node: rebuilt equal, not identical
                assert out[key] == optax.MaskedNode()
            elif key != "kernel":
                assert out[key] is tree[key], key
        assert not np.array_equal(out["kernel"], tree["kernel"])


def test_bad_axes_are_refused_on_leaves_left_alone_too():
    tree = {"step": jnp.ones((2, 2), jnp.int32), "k": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match=r"axis 5 is out of range for leaf \['step'\]"):
        apply(optax_gc.centralize(reduction_axes={"step": (5,), "k": None}), tree)
    # conv_only then skips the rank-2 kernel, but its axes are checked first.
    with pytest.raises(ValueError, match=r"axis 7 is out of range for leaf \['k'\]"):
        apply(
            optax_gc.centralize(
                reduction_axes={"step": None, "k": (7,)}, conv_only=True
            ),
            tree,
        )


@pytest.mark.parametrize(
    ("axes", "pattern"),
    [
        (
            True,
            r"leaf \['k'\] of shape \(3, 4\) must be a tuple of int axes or None, got True\. A tree of bools is a mask: pass it as mask=",
        ),
        (
            0.0,
            r"leaf \['k'\] of shape \(3, 4\) must be a tuple of int axes or None, got 0\.0",
        ),
        ((0, 1.5), r"must be a tuple of int axes or None, got \(0, 1\.5\)"),
        (
            [0, 1],
            r"entries at \['k'\]\[0\], \['k'\]\[1\], inside leaf \['k'\] of shape \(3, 4\).*\(a tuple, not a list\)",
        ),
    ],
)
def test_axes_of_the_wrong_type_are_refused(axes, pattern):
    tree = {"k": jnp.ones((3, 4))}
    with pytest.raises(ValueError, match=pattern):
        apply(optax_gc.centralize(reduction_axes={"k": axes}), tree)


def test_mask_tree_given_as_reduction_axes_is_refused():
    # The easy mistake: a mask-style tree of bools where axes belong.
    tree = random_tree()
    mask_like = jax.tree.map(lambda x: x.ndim > 1, tree)
    with pytest.raises(ValueError, match=r"pass it as mask="):
        apply(optax_gc.centralize(reduction_axes=mask_like), tree)


def test_errors_on_a_single_array_and_a_scalar_name_them():
    with pytest.raises(
        ValueError,
        match=r"axis 2 is out of range for leaf <the root> of shape \(2, 3\)",
    ):
        apply(optax_gc.centralize(reduction_axes=(2,)), jnp.ones((2, 3)))
    with pytest.raises(
        ValueError,
        match=r"leaf \['t'\] of shape \(\), a scalar with no axes\. Use None",
    ):
        apply(optax_gc.centralize(reduction_axes={"t": (0,)}), {"t": jnp.float32(1.0)})


def test_explicit_axes_for_a_python_scalar_are_refused():
    with pytest.raises(
        ValueError, match=r"leaf \['py'\] of shape \(\), a scalar with no axes"
    ):
        apply(optax_gc.centralize(reduction_axes={"py": (0,)}), {"py": 3.0})


def test_empty_subtrees_match_prefix_entries():
    tree = {"drop": {}, "extra": (), "k": jnp.array([[1.0, 2.0], [3.0, 6.0]])}
    for tx in (
        optax_gc.centralize(reduction_axes={"drop": None, "extra": None, "k": (0,)}),
        optax_gc.centralize(reduction_axes=optax_gc.default_reduction_axes(tree)),
        optax_gc.centralize(mask={"drop": False, "extra": True, "k": True}),
    ):
        out = apply(tx, tree)
        assert out["drop"] == {} and out["extra"] == ()
        np.testing.assert_array_equal(out["k"], [[-1.0, -2.0], [1.0, 2.0]])


def test_mask_with_none_is_refused():
    tree = {"k": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"mask gives None to \['b'\], over leaf \['b'\] of shape \(2,\)\. Give True",
    ):
        apply(optax_gc.centralize(mask={"k": True, "b": None}), tree)


def test_mismatch_hints_name_the_confusion():
    tree = {
        "layers": {0: {"kernel": jnp.ones((2, 3))}, 2: {"kernel": jnp.ones((3, 1))}}
    }
    # nnx.Sequential-style int dict keys given as a list: the keys print alike.
    spec = {"layers": [{"kernel": (0,)}, None, {"kernel": (0,)}]}
    with pytest.raises(
        ValueError,
        match=r"no entry for leaf \['layers'\]\[0\]\['kernel'\].*prints alike but is another kind of key",
    ):
        apply(optax_gc.centralize(reduction_axes=spec), tree)
    # A tuple of axes where a mask wants one bool: refused at construction.
    with pytest.raises(
        ValueError,
        match=r"mask gives \(0,\) \(tuple\) to its entry \['k'\].*axes belong in reduction_axes=",
    ):
        apply(optax_gc.centralize(mask={"k": (0,)}), {"k": jnp.ones((2, 2))})


def test_nan_in_one_leaf_leaves_others_alone():
    tree = random_tree()
    bad = tree["dense"]["kernel"].at[0, 0].set(jnp.nan)
    out = apply(
        optax_gc.centralize(), {**tree, "dense": {**tree["dense"], "kernel": bad}}
    )
    clean = apply(optax_gc.centralize(), tree)
    assert np.isnan(out["dense"]["kernel"][:, 0]).all()  # its own column
    assert np.isfinite(out["dense"]["kernel"][:, 1:]).all()  # other columns
    for name in ("conv", "conv1d", "head"):
        chex.assert_trees_all_equal(out[name], clean[name])


# --- dtypes ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_averaged_in_float32(dtype):
    # The exact mean 1 + 2**-8 rounds to 1 in bfloat16, so a gradient centred
    # on a half-precision mean would come out as [0, 2**-7]; subtracting the
    # float32 mean gives the exact [-2**-8, 2**-8], representable in both.
    g = jnp.array([[1.0], [1.0078125]], dtype=dtype)
    out = apply(optax_gc.centralize(), g)
    assert out.dtype == dtype
    np.testing.assert_array_equal(np.asarray(out, np.float32), [[-(2**-8)], [2**-8]])
    # A long column: 256 ones and one 258, mean exactly 2.
    g = jnp.concatenate([jnp.ones((256, 2)), jnp.full((1, 2), 258.0)]).astype(dtype)
    out = apply(optax_gc.centralize(), g)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[0], jnp.full(2, -1.0, dtype))
    np.testing.assert_array_equal(out[-1], jnp.full(2, 256.0, dtype))


def test_float64_stays_float64():
    with enable_x64():
        rng = np.random.default_rng(0)
        g = jnp.asarray(rng.normal(size=(7, 3)))
        assert g.dtype == jnp.float64
        out = apply(optax_gc.centralize(), g)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(out, reference_gc(g, (0,)), rtol=1e-14, atol=1e-15)


def test_complex_is_centralized_in_its_dtype():
    g = jnp.array([[1 + 1j, 2.0], [3 - 1j, 4.0]], dtype=jnp.complex64)
    out = apply(optax_gc.centralize(), g)
    assert out.dtype == jnp.complex64
    np.testing.assert_allclose(out, [[-1 + 1j, -1], [1 - 1j, 1]], atol=1e-6)


# --- errors ---------------------------------------------------------------


def test_unknown_layout_is_refused_at_construction():
    with pytest.raises(
        ValueError, match=r"Unknown layout 'NHWC'.*'channels_last'.*'channels_first'"
    ):
        optax_gc.centralize(layout="NHWC")
    with pytest.raises(ValueError, match="Unknown layout"):
        optax_gc.default_reduction_axes({}, layout="pytorch")


@pytest.mark.parametrize(
    ("axes", "pattern"),
    [
        (
            (2,),
            r"axis 2 is out of range for leaf \['dense'\]\['kernel'\] of shape \(20, 6\) \(rank 2\).*\[-2, 1\]",
        ),
        ((-3,), r"axis -3 is out of range for leaf \['dense'\]\['kernel'\]"),
        (
            (),
            r"empty tuple for leaf \['dense'\]\['kernel'\] of shape \(20, 6\).*use None",
        ),
        (
            (0, -2),
            r"\(0, -2\) for leaf \['dense'\]\['kernel'\] of shape \(20, 6\) names an axis twice",
        ),
    ],
)
def test_bad_axes_name_the_leaf_and_shape(axes, pattern):
    tree = {"dense": {"kernel": jnp.ones((20, 6)), "bias": jnp.ones(6)}}
    spec = {"dense": {"kernel": axes, "bias": None}}
    with pytest.raises(ValueError, match=pattern):
        apply(optax_gc.centralize(reduction_axes=spec), tree)
    with pytest.raises(ValueError, match=pattern):  # also at trace time
        jax.jit(lambda t: apply(optax_gc.centralize(reduction_axes=spec), t))(tree)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        (
            {"dense": {"kernel": (0,)}},
            r"no entry for leaf \['dense'\]\['bias'\] of shape \(6,\)",
        ),
        (
            {"dense": {"kernel": (0,), "bias": None, "extra": None}},
            r"entry at \['dense'\]\['extra'\], which is not in the params",
        ),
        (
            {"dense": {"kernel": {"w": (0,)}, "bias": None}},
            r"entry at \['dense'\]\['kernel'\]\['w'\], inside leaf \['dense'\]\['kernel'\] of shape \(20, 6\)",
        ),
        ({"dense": (0,)}, r"axes \(0,\) to \['dense'\], which is a subtree"),
    ],
)
def test_reduction_axes_tree_mismatch_names_the_path(spec, pattern):
    tree = {"dense": {"kernel": jnp.ones((20, 6)), "bias": jnp.ones(6)}}
    with pytest.raises(ValueError, match=pattern):
        apply(optax_gc.centralize(reduction_axes=spec), tree)


@pytest.mark.parametrize(
    ("mask", "pattern"),
    [
        (
            {"dense": {"kernel": True}},
            r"mask tree does not match.*no entry for leaf \['dense'\]\['bias'\] of shape \(6,\)",
        ),
        (
            {"dense": {"kernel": True, "bias": False}, "other": True},
            r"mask tree.*entry at \['other'\], which is not in the params",
        ),
        (
            lambda p: {"dense": {"kernel": True}},
            r"no entry for leaf \['dense'\]\['bias'\]",
        ),
    ],
)
def test_mask_tree_mismatch_names_the_path(mask, pattern):
    tree = {"dense": {"kernel": jnp.ones((20, 6)), "bias": jnp.ones(6)}}
    with pytest.raises(ValueError, match=pattern):
        apply(optax_gc.centralize(mask=mask), tree)


def test_is_stateless_and_pure():
    tx = optax_gc.centralize()
    tree = random_tree()
    state = tx.init(tree)
    assert state == optax.EmptyState()
    before = jax.tree.map(np.array, tree)
    out1, s1 = tx.update(tree, state)
    out2, _ = jax.jit(tx.update)(tree, s1)
    chex.assert_trees_all_close(out1, out2, atol=1e-6)
    chex.assert_trees_all_equal(tree, before)  # the input is not modified
    assert s1 == state
