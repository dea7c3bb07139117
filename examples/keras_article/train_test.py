"""Both protocols, really trained on tiny settings, and Horses or Humans zips.

The JAX backend (set by the repository's conftest.py before Keras is
imported). Keras' own code needs JAX's standard dtype promotion and rank
promotion, as in ``tests/test_keras.py``.
"""

import io
import json
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
PIL = pytest.importorskip("PIL")

from examples.keras_article import train  # noqa: E402
from examples.keras_article.configs import default  # noqa: E402

pytestmark = pytest.mark.keras  # see conftest.py


def _tiny(**overrides):
    config = default.get_config()
    config.update(dataset="digits", seeds=2, epochs=2, steps_per_epoch=2)
    config.update(batch_size=16, validation_steps=2, validation_batch_size=16)
    config.image_size = 24
    config.update(**overrides)
    return config


def test_fair_protocol(tmp_path):
    res = train.train_and_evaluate(_tiny(), str(tmp_path))
    s = res["summary"]
    assert s["same_start"]
    assert len(res["runs"]) == 4 and {r["seed"] for r in res["runs"]} == {0, 1}
    # GC ran: centred gradients into RMSprop, held fan-in sums under SGD.
    assert res["gc_active"]["active"] == "yes"
    assert res["gc_active"]["gc_max"] < train.CENTRED_BELOW
    assert res["gc_active"]["baseline_max"] > train.UNCENTRED_ABOVE
    assert res["fan_in_sums"]["gc_max"] < 1e-5 < res["fan_in_sums"]["baseline_max"]
    # The paired difference is the mean of the per-seed differences.
    gc = sorted((r for r in res["runs"] if r["gc"]), key=lambda r: r["seed"])
    base = sorted((r for r in res["runs"] if not r["gc"]), key=lambda r: r["seed"])
    diffs = [g["val_loss"] - b["val_loss"] for g, b in zip(gc, base, strict=True)]
    assert s["difference"]["val_loss"]["mean"] == pytest.approx(np.mean(diffs))
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["summary"]["verdicts"] == s["verdicts"]
    summary = (tmp_path / "summary.md").read_text()
    assert "GC active: yes" in summary and "0-4 vs 5-9" in summary


def test_article_protocol(tmp_path):
    res = train.train_and_evaluate(_tiny(protocol="article"), str(tmp_path))
    first, gc, control = res["runs"]
    assert (first["run"], gc["run"], control["run"]) == ("1", "2", "2'")
    assert (first["gc"], gc["gc"], control["gc"]) == (False, True, False)
    s = res["summary"]
    assert s["same_start"]
    assert s["article_gain"]["loss"] == pytest.approx(
        s["continued_training"]["loss"] + s["gc_effect"]["loss"]
    )
    assert res["gc_active"]["active"] == "yes"
    assert "execution time (s)" in res["text"] and "(control)" in res["text"]


def _png(color):
    buffer = io.BytesIO()
    PIL.Image.new("RGBA", (30, 30), (*color, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def test_horses_or_humans_from_data_dir(tmp_path):
    """The same layout as the published zips, a few images each."""
    data_dir = tmp_path / "hoh"
    data_dir.mkdir()
    for name, n in (("horse-or-human.zip", 40), ("validation-horse-or-human.zip", 32)):
        with zipfile.ZipFile(data_dir / name, "w") as z:
            for i in range(n):
                cls = ("horses", "humans")[i % 2]
                z.writestr(f"{cls}/{cls}{i:02d}.png", _png((255 * (i % 2), 0, 0)))
    res = train.train_and_evaluate(
        _tiny(dataset="auto", data_dir=str(data_dir), seeds=1),
        str(tmp_path / "out"),
    )
    d = res["dataset"]
    assert (d["name"], d["image_size"], d["n_train"], d["n_val"]) == (
        "horses_or_humans",
        24,
        40,
        32,
    )
    assert d["note"] is None and res["gc_active"]["gc_max"] < train.CENTRED_BELOW
