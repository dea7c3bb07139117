"""The documentation site: its code runs, it documents every public name, and
it builds with warnings as errors.

Every ```python fence of a page in docs/ is executed, each page's blocks in
order in one namespace (as a reader runs them). A ```text fence right after a
```python fence is that block's expected standard output.
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import jax
import pytest

import optax_gc

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [
    "index.md",
    "getting_started.md",
    "what_gc_does.md",
    "layouts.md",
    "placement.md",
    "recipes.md",
    "keras.md",
    "results.md",
    "performance.md",
    "api.md",
]
# A MyST fence: its info string ("python", "{eval-rst}"), its body. The pages
# do not nest fences.
FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", flags=re.DOTALL | re.MULTILINE)


def _fences(page: str) -> list[tuple[str, str, int, int]]:
    """(language, body, start, end) of every fence of a page, in order."""
    text = (DOCS / page).read_text()
    return [(m[1], m[2], m.start(), m.end()) for m in FENCE.finditer(text)]


def _programs(page: str) -> list[tuple[str, str | None]]:
    """Each python block of a page with the text block right after it, if any."""
    fences = _fences(page)
    text = (DOCS / page).read_text()
    out = []
    for i, (lang, body, _, end) in enumerate(fences):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(fences):
            nlang, nbody, nstart, _ = fences[i + 1]
            if nlang == "text" and not text[end:nstart].strip():
                expected = nbody
        out.append((body, expected))
    return out


def test_every_page_exists_and_is_in_the_toctree():
    assert sorted(p.name for p in DOCS.glob("*.md")) == sorted(PAGES)
    index = (DOCS / "index.md").read_text()
    for page in PAGES:
        assert (DOCS / page).is_file(), page
        if page != "index.md":
            assert re.search(rf"^{page[:-3]}$", index, flags=re.MULTILINE), (
                f"{page} is not in the toctree of docs/index.md"
            )


# Readers run this code under JAX's default dtype and rank promotion (and
# optax's adam needs the former).
@pytest.mark.slow
@pytest.mark.standard_promotion
@pytest.mark.parametrize(
    "page", [p for p in PAGES if (DOCS / p).is_file() and _programs(p)]
)
def test_page_code_runs(page, capsys, monkeypatch, tmp_path):
    # Pages may write files (figures, checkpoints): keep them out of the tree.
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page[:-3]}"}
    for index, (code, expected) in enumerate(_programs(page)):
        capsys.readouterr()
        with jax.numpy_rank_promotion("allow"):
            exec(compile(code, f"docs/{page} python block {index}", "exec"), namespace)
        if expected is not None:
            out = capsys.readouterr().out
            assert out.strip() == expected.strip(), (
                f"docs/{page} python block {index} printed\n{out}\n"
                f"but the page shows\n{expected}"
            )


def _documented_names() -> set[str]:
    """Names in an autodoc directive (``.. autofunction:: name``) of docs/api.md."""
    text = (DOCS / "api.md").read_text()
    return set(re.findall(r"^\.\. auto\w+:: +([\w.]+)", text, flags=re.MULTILINE))


def _public_names() -> list[str]:
    """``optax_gc.__all__`` and ``optax_gc.flax.__all__``, fully qualified."""
    pytest.importorskip("flax")  # optax_gc.flax needs it
    pytest.importorskip("keras")  # optax_gc.keras needs it
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from optax_gc import flax as gc_flax
    from optax_gc import keras as gc_keras

    return (
        [f"optax_gc.{n}" for n in optax_gc.__all__]
        + [f"optax_gc.flax.{n}" for n in gc_flax.__all__]
        + [f"optax_gc.keras.{n}" for n in gc_keras.__all__]
    )


def test_api_reference_documents_every_public_name():
    documented = _documented_names()
    missing = [n for n in _public_names() if n not in documented]
    assert not missing, (
        "public names missing from an autodoc directive in docs/api.md: "
        + ", ".join(missing)
    )


def test_every_public_name_has_an_example():
    # A doctest in its docstring, or a python block (run above) between its
    # autodoc directive in docs/api.md and the next directive.
    text = (DOCS / "api.md").read_text()
    starts = [
        (m[1], m.end())
        for m in re.finditer(r"^\.\. auto\w+:: +([\w.]+)", text, flags=re.MULTILINE)
    ]
    after = {
        name: text[end : (starts[i + 1][1] if i + 1 < len(starts) else len(text))]
        for i, (name, end) in enumerate(starts)
    }
    without = []
    for name in _public_names():
        module, _, attr = name.rpartition(".")
        doc = getattr(importlib.import_module(module), attr).__doc__ or ""
        if ">>>" not in doc and "```python\n" not in after.get(name, ""):
            without.append(name)
    assert not without, "public names without an example: " + ", ".join(without)


def test_getting_started_shows_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    commands = [
        body.strip()
        for lang, body, _, _ in _fences("getting_started.md")
        if lang == "bash" and body.startswith("python3 -m venv")
    ]
    assert len(commands) == 2
    for command in commands:
        assert command in readme, f"not a README command: {command}"


def _flagship_summary() -> dict[str, dict[str, str]]:
    """Per optimizer of the committed run: each verdict, and each table row."""
    text = (DOCS / "results" / "fashion_mnist" / "summary.md").read_text()
    out = {}
    for section in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        name = section.split()[0]
        verdict = re.search(r"^Verdict: (.*)\.$", section, flags=re.MULTILINE)[1]
        rows = re.findall(r"^\| ([^|]+?) \| .*\| ([^|]*) \|$", section, re.MULTILINE)
        out[name] = dict(part.split(": ") for part in verdict.split("; "))
        out[name] |= {f"{metric} difference": diff.strip() for metric, diff in rows}
    return out


def test_results_page_describes_the_committed_run():
    # results.md, "What this run shows", says this about the committed run.
    run = json.loads((DOCS / "results" / "fashion_mnist" / "results.json").read_text())
    assert run["config"]["epochs"] == 2, "results.md says each run is two epochs"
    summary = _flagship_summary()
    adam, sgd, rmsprop = summary["adam"], summary["sgd"], summary["rmsprop"]
    assert adam["test loss"] == adam["test accuracy"] == "GC better"
    assert sgd["train loss"] == "GC better"
    for metric in ("test loss", "test accuracy"):
        assert sgd[metric].startswith("no significant difference"), metric
    assert rmsprop["train loss"] == rmsprop["test loss"] == "GC worse"
    assert rmsprop["test accuracy"].startswith("no significant difference")
    # "The transformer example": its README's included run, as results.md says.
    readme = (ROOT / "examples" / "transformer" / "README.md").read_text()
    expected = readme.split("## What to expect")[1].split("## Files")[0]
    assert "held-out loss: no significant difference" in expected
    assert "300 steps, 3 seeds" in expected
    # "The differences that are significant are small, under one point."
    for name, verdicts in summary.items():
        mean = float(verdicts["test accuracy difference"].split()[0])
        assert abs(mean) < 0.01, (name, mean)


def test_offline_inventory_is_a_valid_empty_inventory():
    # docs/conf.py falls back to it when an intersphinx site cannot be reached.
    raw = (DOCS / "_intersphinx" / "empty.inv").read_bytes()
    header, _, body = raw.partition(b"zlib.\n")
    assert header.startswith(b"# Sphinx inventory version 2\n")
    assert zlib.decompress(body) == b""


@pytest.mark.slow
def test_projection_figure_script(tmp_path):
    script = DOCS / "figures" / "make_projection_figure.py"
    spec = importlib.util.spec_from_file_location("make_projection_figure", script)
    fig = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fig)
    out = tmp_path / "projection.png"
    drift = fig.main(out, steps=50)  # the committed figure has 300
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # With GC the fan-in sums move by float32 rounding only; without, by O(0.1).
    assert drift["gc"] < 1e-5
    assert drift["baseline"] > 1e-2
    assert (DOCS / "figures" / "projection.png").is_file()


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    # Outside CI a checkout without the docs extra skips; in CI (CI=true) the
    # build must run, so a missing Sphinx fails.
    for module in ("sphinx", "myst_parser", "sphinx_book_theme"):
        if importlib.util.find_spec(module) is None:
            if os.environ.get("CI"):
                pytest.fail(f"{module} is not installed: pip install -e '.[docs]'")
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q"),
            *("-b", "html", str(DOCS), str(tmp_path / "html")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
