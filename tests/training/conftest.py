"""Fixtures of the training tests (the SparkSession and `train_generated`: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import mlflow
import pytest

if TYPE_CHECKING:
    from tests.conftest import Training

# Enough customers for the generated segments to be recovered clearly (see test_train.py).
ROWS = 50_000


@pytest.fixture(scope="module")
def trained_once(train_generated: Callable[..., Training]) -> Training:
    """One cumulative training of three windows of generated rows, k chosen by silhouette over
    2..8, shared by the module. Its tests only read it: the ones that train again use a store of
    their own (`tracking_uri`)."""
    return train_generated(ROWS)


@pytest.fixture
def training(trained_once: Training) -> Iterator[Training]:
    """The module's training, with MLflow's tracking URI pointing at its store during the test,
    whatever the tests before it pointed it at."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(trained_once.uri)
    yield trained_once
    mlflow.set_tracking_uri(previous)
