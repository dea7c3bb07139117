"""The transformer example trains, and GC acts on exactly the kernels."""

import json
import math

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import optax_gc
from examples.common import diagnostics
from examples.transformer import train
from examples.transformer.configs import default
from optax_gc.flax import fan_in_axes


def tiny_config(**overrides):
    """The default config cut to a two-block stack and a few steps."""
    config = default.get_config()
    config.update(
        corpus_chars=20_000,
        context=16,
        dim=16,
        heads=2,
        layers=2,  # == heads: the stack axis must be told from the head axis
        batch_size=8,
        steps=20,
        eval_every=10,
        eval_windows=32,
        seeds=2,
        check_steps=3,
    )
    config.update(overrides)
    return config


@pytest.mark.standard_promotion  # optax.adam: `1 - b1**count`, int32 count
def test_compares_arms_and_checks_gc(tmp_path):
    res = train.train_and_evaluate(tiny_config(), str(tmp_path), echo=lambda s: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["summary"]["difference"]["gc"]["held_out_loss"]["mean"]
        == (res["summary"]["difference"]["gc"]["held_out_loss"]["mean"])
    )
    runs = res["runs"]
    assert set(runs) == {"gc", "baseline"} and len(runs["gc"]) == 2
    vocab = res["data"]["vocab"]
    for arm in runs.values():
        for run in arm:
            # It learns: below a uniform guess over the vocabulary.
            assert run["curve"][-1]["held_out"] < math.log(vocab)
    diff = res["summary"]["difference"]["gc"]["held_out_loss"]
    per_seed = [
        a["held_out_loss"] - b["held_out_loss"]
        for a, b in zip(runs["gc"], runs["baseline"], strict=True)
    ]
    assert diff["mean"] == pytest.approx(np.mean(per_seed))
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    # GC active: every kernel's gradient entering adam is centred per unit
    # (per head for attention); the baseline's is not.
    active = res["gc_active"]
    assert res["active"]["verdict"] == "yes"
    assert max(v["max"] for v in active["gc"].values()) < 1e-5
    assert len(active["gc"]["blocks/attn/query/kernel"]["per_head"]) == 2
    assert min(active["baseline"][k]["max"] for k in active["baseline"]) > 1e-4
    # What GC must leave alone, it leaves alone, bit for bit.
    alone = res["untouched"]["left_alone"]
    assert {k: v["count"] for k, v in alone.items()} == {
        "embeddings": 2,
        "norm parameters": 6,
        "biases": 7,
    }
    assert all(v["max_change"] == 0.0 for v in alone.values())
    assert min(res["untouched"]["kernels_changed"].values()) > 0.0
    # Plain SGD: fan-in sums held by GC, moved without; the rest trains.
    plane = res["hyperplane"]
    assert plane["gc"]["sum_change"] < 1e-5 < 1e-3 < plane["baseline"]["sum_change"]
    assert min(plane["gc"]["other_change"].values()) > 1e-4
    # The rank rule differs on every leaf of the scanned stack (it averages
    # over the layer axis: kernels, stacked biases and norm parameters) and
    # on the embeddings; it agrees on the unstacked head and final norm.
    differ = {d["param"] for d in res["rank_rule_differences"]}
    stacked = {
        diagnostics.leaf_name(p)
        for p, _ in jax.tree_util.tree_leaves_with_path(
            nnx.to_pure_dict(
                nnx.state(train.make_model(tiny_config(), 8, 0), nnx.Param)
            )
        )
    }
    stacked = {n for n in stacked if n.startswith("blocks/")}
    assert len(stacked) == 16
    assert differ == stacked | {"token_embed/embedding", "position_embed/embedding"}
    for d in res["rank_rule_differences"]:
        if d["param"] == "blocks/attn/query/kernel":
            assert d["shape"] == [2, 16, 2, 8]
            assert d["fan_in_axes"] == (1,) and d["rank_rule"] == (0, 1, 2)
    assert "Verdict, gc" in res["text"] and "GC active: yes" in res["text"]


def test_sgd_keeps_every_fan_in_sum():
    """chain(centralize(reduction_axes=fan_in_axes(model)), sgd) on the model."""
    config = tiny_config()
    corpus = train.make_corpus(config)
    model = train.make_model(config, len(corpus.vocab), 0)
    axes = fan_in_axes(model)
    tx = optax.chain(optax_gc.centralize(reduction_axes=axes), optax.sgd(0.3))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    starts = np.random.default_rng(0).integers(0, 10_000, (8, config.batch_size))
    losses = [
        float(train.train_step(model, optimizer, train.windows(corpus.train, s, 16)))
        for s in starts
    ]
    assert losses[-1] < losses[0]
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    kernels = diagnostics.named_axes(axes)
    assert len(kernels) == 7  # query, key, value, out, mlp up and down, head
    for (path, w0), w1 in zip(
        jax.tree_util.tree_leaves_with_path(before), jax.tree.leaves(after), strict=True
    ):
        name = diagnostics.leaf_name(path)
        w0, w1 = np.asarray(w0, np.float64), np.asarray(w1, np.float64)
        if name in kernels:
            a = kernels[name]
            np.testing.assert_allclose(w1.sum(a), w0.sum(a), atol=1e-5, err_msg=name)
            assert np.abs(w1 - w0).max() > 1e-3, name
        elif name != "blocks/attn/key/bias":  # softmax cancels it: no gradient
            assert np.abs(w1 - w0).max() > 1e-4, name  # embeddings, norms, biases


def test_corpus_is_deterministic_text():
    text = train.load_corpus(5_000)
    assert text == train.load_corpus(5_000) and len(text) == 5_000
    assert text.isascii() and "\t" not in text
    corpus = train.make_corpus(tiny_config())
    assert len(corpus.train) + len(corpus.held_out) == 20_000
    assert corpus.train.max() < len(corpus.vocab)
    with pytest.raises(ValueError, match="arms="):
        train.train_and_evaluate(tiny_config(arms="gc,bogus"), echo=lambda s: None)
