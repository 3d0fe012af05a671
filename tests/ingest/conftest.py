"""Fixtures of the stream tests (the broker's are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.data.generator import write_dataset
from pipelines.data.load import load_transactions
from pipelines.ingest.window_files import rows_digest


@pytest.fixture(scope="module")
def dataset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated dataset file of the requesting module's `ROWS` rows (seed 11) to replay."""
    rows = request.module.ROWS
    return write_dataset(tmp_path_factory.mktemp("data") / "retail.csv", rows=rows, seed=11)


@pytest.fixture(scope="module")
def input_digest(dataset: Path) -> str:
    """The digest of the dataset's rows: what the windows must add up to."""
    return rows_digest(load_transactions(dataset).frame)
