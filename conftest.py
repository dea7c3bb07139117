"""pytest set-up for the whole repository: tests/, the doctests, examples/.

Loaded before any test module, so it can set what must come before jax is
imported:

* 8 simulated CPU devices, for the sharding tests and the sharded example;
* Keras on its JAX backend (``KERAS_BACKEND``, unless the environment picks
  another), which must be chosen before Keras is first imported;
* rank promotion that raises, and strict dtype promotion for every test not
  marked ``standard_promotion`` (optax's adam is not strict-safe:
  ``1 - b1**count`` with an int32 count), so silent broadcasting or dtype
  promotion fails loudly. Docstring examples run as users run them, under
  JAX's default dtype and rank promotion;
* the markers ``standard_promotion``, ``keras`` and ``slow``. ``keras``: the
  test runs Keras, whose own code needs JAX's default dtype and rank
  promotion, and whose 3.15 ``Variable.__array__`` predates NumPy 2's
  ``copy`` keyword (a DeprecationWarning from Keras' own ``get_config``,
  ignored for those tests only). ``slow`` is the Sphinx
  build, the docs pages' code, real training (every ``examples/*/*_test.py``
  and ``tests/test_training.py``) and the benchmark smoke runs:
  ``pytest -m "not slow"`` runs the core alone; plain
  ``pytest`` (the README's command) runs everything;
* the examples' ``main.py`` and ``__main__.py`` files are not collected: each
  defines absl flags (or runs) when imported, and ``--doctest-modules``
  imports every module.
"""

import os
from pathlib import Path

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

collect_ignore_glob = ["examples/*/main.py", "examples/*/__main__.py"]

_EXAMPLES = Path(__file__).parent / "examples"


def pytest_configure(config: pytest.Config) -> None:
    """Registers the markers (unknown markers are errors with -W error)."""
    config.addinivalue_line(
        "markers",
        "standard_promotion: the test runs optax code that is not strict-promotion "
        "safe (e.g. adam's `1 - b1**count` with an int32 count)",
    )
    config.addinivalue_line(
        "markers",
        "keras: runs Keras (default promotion; Keras' NumPy 2 __array__ warning "
        "ignored)",
    )
    config.addinivalue_line(
        "markers",
        "slow: docs build, real training or benchmark runs; deselect with "
        '-m "not slow" to run the fast core alone',
    )


_KERAS_ARRAY_WARNING = (
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every example's ``*_test.py`` trains for real: marked ``slow``."""
    for item in items:
        path = Path(str(item.fspath))
        if path.name.endswith("_test.py") and _EXAMPLES in path.parents:
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("keras"):
            item.add_marker(pytest.mark.filterwarnings(_KERAS_ARRAY_WARNING))


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request: pytest.FixtureRequest):
    """Strict dtype promotion for every test but those marked otherwise."""
    if isinstance(request.node, pytest.DoctestItem):
        # Docstring examples run as users run them: JAX's defaults.
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            yield
        return
    if request.node.get_closest_marker("keras"):
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            yield
        return
    marked = request.node.get_closest_marker("standard_promotion")
    with jax.numpy_dtype_promotion("standard" if marked else "strict"):
        yield
