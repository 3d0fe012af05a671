"""Fixtures of the dataset tests: the generator's output, in memory and as a file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.data.generator import generate_dataset, write_dataset


@pytest.fixture(scope="module")
def dataset(request: pytest.FixtureRequest) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Transactions and true segments of the requesting module's `ROWS` rows (seed 7)."""
    return generate_dataset(request.module.ROWS, seed=7)


@pytest.fixture(scope="module")
def written(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same dataset written as a file, as `python -m pipelines.generate` writes it."""
    path = tmp_path_factory.mktemp("generated") / "retail.csv"
    return write_dataset(path, rows=request.module.ROWS, seed=7)
