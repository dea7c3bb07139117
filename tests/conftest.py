"""Test set-up, done before any test module imports jax.

8 simulated CPU devices for the sharding tests, rank promotion that raises,
and strict dtype promotion for every test not marked `standard_promotion`.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()

import jax  # noqa: E402

# Silent broadcasting or dtype promotion inside the transform fails loudly.
jax.config.update("jax_numpy_rank_promotion", "raise")

import pytest  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "standard_promotion: the test runs optax code that is not strict-promotion "
        "safe (e.g. adam's `1 - b1**count` with an int32 count)",
    )


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    """Strict dtype promotion for every test but those marked otherwise."""
    marked = request.node.get_closest_marker("standard_promotion")
    with jax.numpy_dtype_promotion("standard" if marked else "strict"):
        yield
