"""Fixtures of the serving tests: a registry filled by the training job itself.

The models served here are the ones `pipelines.train.train_windows` registers: three windows of a
small generated dataset, trained once per test run (tests/conftest.py's `train_generated`), so
the server is tested on what it will really be given, whatever the recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.conftest import Training

# Small, to keep the suite short: the tests need three real versions, not good clusters.
ROWS = 24_000


@pytest.fixture(scope="session")
def trained_store(train_generated: Callable[..., Training]) -> Training:
    """Versions 1..3 with aliases model1..3, as a fresh training of three windows leaves them.

    Tests must not change this store: the ones that register versions or move aliases use a
    store of their own (`tracking_uri`).
    """
    return train_generated(ROWS, seed=5)


@pytest.fixture(scope="session")
def store(trained_store: Training) -> str:
    """The tracking URI of `trained_store`."""
    return trained_store.uri
