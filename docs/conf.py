"""Sphinx configuration for the optax-gc documentation.

Build (from the repository root; warnings are errors)::

    sphinx-build -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path

# Document the checkout being built, even where another copy is installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# optax_gc.keras: Keras picks its backend when first imported.
os.environ.setdefault("KERAS_BACKEND", "jax")

project = "optax-gc"
author = "The optax-gc authors"
copyright = "2025, The optax-gc authors"
release = importlib.metadata.version("optax-gc")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
# results/ holds files written by examples/compare: the Markdown tables
# there are included into results.md, not pages of their own.
exclude_patterns = ["_build", "results/**/*.md", "**/README.md"]

# MyST: $...$ and $$...$$ math, amsmath environments, ::: fences, {{ name }}
# substitutions, and anchors for the headings of every page so pages can link
# to each other's sections.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "substitution"]
myst_heading_anchors = 3


def _command(module: str, args: dict, *, out: tuple[str, str]) -> str:
    """A shell command that reruns ``python -m module`` with recorded ``args``.

    ``args`` are the parsed arguments a script saved (argparse's
    ``vars(args)``): each becomes ``--name value`` (a list comma-joined, a
    true bool a bare flag, ``None`` and false left out), and ``out`` gives
    the option that names the output and its repository-relative value.
    """
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if key == out[0]:
            flags.append(f"{flag} {out[1]}")
        elif value is True:
            flags.append(flag)
        elif isinstance(value, list | tuple):
            flags.append(f"{flag} {','.join(map(str, value))}")
        elif isinstance(value, float):
            flags.append(f"{flag} {value:g}")
        elif value not in (None, False):
            flags.append(f"{flag} {value}")
    return f"```bash\npython -m {module} \\\n    " + " \\\n    ".join(flags) + "\n```"


def _benchmarks() -> dict[str, str]:
    """Tables, machine and command of the committed benchmark runs.

    The JSON files in benchmarks/results/ are rendered with the benchmark
    scripts' own ``table()``, the function that printed them, so the page
    shows exactly what was measured.
    """
    from benchmarks import bench_step, bench_update

    out = {}
    for name, script in (("update", bench_update), ("step", bench_step)):
        path = ROOT / "benchmarks" / "results" / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: performance.md shows that run. Write it with "
                f"`python -m benchmarks.bench_{name} --json {path.relative_to(ROOT)}`."
            )
        run = json.loads(path.read_text())
        m = run["machine"]
        out[f"bench_{name}_table"] = script.table(run["results"])
        out[f"bench_{name}_command"] = _command(
            f"benchmarks.bench_{name}",
            run["args"],
            out=("json", str(path.relative_to(ROOT))),
        )
        out[f"bench_{name}_machine"] = (
            f"{m['cpu']} ({m['cores']} cores), {m['backend']} backend, "
            f"jax {m['jax']}, optax {m['optax']}, Python {m['python']}, "
            f"on {m['date']}"
        )
    return out


myst_substitutions = _benchmarks()

# Google-style docstrings, as in optax.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
# Show optax's type aliases by name rather than expanded into long unions.
autodoc_type_aliases = {
    name: name
    for name in (
        "optax.ScalarOrSchedule",
        "optax.Params",
        "optax.Updates",
        "optax.GradientTransformationExtraArgs",
    )
}

# Links to the JAX family's docs. Each project lists two inventory locations:
# the site's objects.inv, then an empty inventory shipped in docs/_intersphinx.
# Online, the first one loads and references link to jax, optax and flax.
# Offline (CI, air-gapped machines) the download fails, Sphinx falls back to
# the empty file and only logs it, so `-W` still passes; references to those
# projects then render as plain code instead of links (nitpicky is off, so an
# unresolved external reference is not a warning).
_OFFLINE = "_intersphinx/empty.inv"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", (None, _OFFLINE)),
    "jax": ("https://docs.jax.dev/en/latest/", (None, _OFFLINE)),
    "optax": ("https://optax.readthedocs.io/en/latest/", (None, _OFFLINE)),
    "flax": ("https://flax.readthedocs.io/en/latest/", (None, _OFFLINE)),
}
intersphinx_timeout = 10
nitpicky = False

html_theme = "sphinx_book_theme"
html_title = "optax-gc"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
}
