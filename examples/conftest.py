"""pytest set-up for the examples (``tests/conftest.py`` does not apply here).

* ``main.py`` files are not collected: each defines absl flags when imported
  (``--doctest-modules`` imports every module), and a second definition of
  the same flag in one process raises.
* Every test and doctest runs with strict dtype promotion and rank promotion
  that raises, as the package's tests do, unless marked
  ``standard_promotion`` (optax's adam is not strict-safe: ``1 - b1**count``
  with an int32 count). The modes are set with context managers, so nothing
  global changes.
"""

import pytest

collect_ignore_glob = ["*/main.py"]


def pytest_configure(config: pytest.Config) -> None:
    """Registers the ``standard_promotion`` marker (warnings are errors)."""
    config.addinivalue_line(
        "markers",
        "standard_promotion: the test runs optax code that is not strict-promotion "
        "safe (e.g. adam's `1 - b1**count` with an int32 count)",
    )


@pytest.fixture(autouse=True)
def _strict_promotion(request: pytest.FixtureRequest):
    """Strict dtype promotion and rank promotion that raises, per test."""
    # Imported here so that loading this conftest never imports jax ahead of
    # tests/conftest.py, which must set XLA_FLAGS first.
    import jax

    marked = request.node.get_closest_marker("standard_promotion")
    with (
        jax.numpy_dtype_promotion("standard" if marked else "strict"),
        jax.numpy_rank_promotion("raise"),
    ):
        yield
