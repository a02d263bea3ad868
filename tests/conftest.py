"""Fixtures and session configuration for the test suite (the shared helpers are in helpers.py)."""

from __future__ import annotations

import os

# The suite's programs are tiny, so compiling them is most of its time: XLA's CPU backend at
# optimisation level 0 compiles them several times faster and runs the same operations. Set
# before JAX starts its backend (the subprocesses of the end-to-end tests inherit it).
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]
).strip()

import jax
import pytest
from helpers import x64

# Every test under tests/ runs with strict dtype promotion (the autouse fixture below): a test
# or library line that mixes dtypes (int32 + float32, bfloat16 * float32) without saying so
# fails instead of silently promoting. Docstring examples (amal_jax/, outside this conftest's
# reach) are user code and run under JAX's default, standard promotion.


_ADAM = "optax.adam's bias correction mixes its int32 step count with Python floats"
# Whole modules whose code under test is user-level code that trains with optax.adam (which
# strict promotion refuses, see helpers.standard_promotion) and is not the library's.
STANDARD_PROMOTION_MODULES = {
    "test_benchmarks.py": f"the benchmark harness trains with optax.adam: {_ADAM}",
    "test_teachers.py": f"the teachers train with optax.adam: {_ADAM}",
    "test_examples.py": f"examples/custom_loop.py trains with optax.adam: {_ADAM}",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "standard_promotion(reason): run this test under JAX's standard dtype promotion; "
        "the reason says why the code under test legitimately relies on it",
    )


def pytest_collection_modifyitems(items):
    for item in items:
        reason = STANDARD_PROMOTION_MODULES.get(item.path.name)
        if reason is not None:
            item.add_marker(pytest.mark.standard_promotion(reason))


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    """Strict promotion, or standard for tests marked ``standard_promotion(reason)``."""
    marker = request.node.get_closest_marker("standard_promotion")
    if marker is not None and not (marker.args and marker.args[0]):
        raise pytest.UsageError(f"{request.node.nodeid}: standard_promotion needs a reason")
    with jax.numpy_dtype_promotion("strict" if marker is None else "standard"):
        yield


@pytest.fixture
def float64():
    with x64():
        yield
