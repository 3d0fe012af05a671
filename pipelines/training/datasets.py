"""A stream window as an MLflow dataset input, so the runs table's Dataset column says what each
model saw: name `window-<i>`, the window's digest, its Kafka topic and offsets as the source.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import ColSpec, Schema

from pipelines.ingest.window_files import ARROW_SCHEMA, Manifest

# A window's rows as MLflow column types: the schema of each window dataset a run logs.
_MLFLOW_TYPE = {pa.string(): "string", pa.int64(): "long", pa.float64(): "double"}
WINDOW_SCHEMA = Schema(
    [
        ColSpec("datetime" if pa.types.is_timestamp(f.type) else _MLFLOW_TYPE[f.type], f.name)
        for f in ARROW_SCHEMA
    ]
)


class KafkaWindowSource(DatasetSource):
    """Where a window's rows came from: a Kafka topic and an offset range per partition."""

    def __init__(self, topic: str, offsets: dict[int, list[int]]) -> None:
        self.topic = topic
        self.offsets = {int(p): [int(start), int(end)] for p, (start, end) in offsets.items()}

    @staticmethod
    def _get_source_type() -> str:
        return "kafka"

    def load(self) -> Any:
        raise NotImplementedError("a window is read from its Parquet file, not replayed from Kafka")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> KafkaWindowSource:
        raise NotImplementedError("build a KafkaWindowSource from a window's manifest")

    def to_dict(self) -> dict[str, Any]:
        ranges = ",".join(f"{p}:{s}-{e}" for p, (s, e) in sorted(self.offsets.items()))
        return {
            "uri": f"kafka://{self.topic}?offsets={ranges}",  # partition:start-end, end exclusive
            "topic": self.topic,
            "offsets": {str(p): r for p, r in sorted(self.offsets.items())},
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> KafkaWindowSource:
        return cls(source_dict["topic"], source_dict["offsets"])


class WindowDataset(MetaDataset):
    """A window as an MLflow dataset input: name `window-<i>`, the window's digest, its Kafka
    source, row count and invoice dates; metadata only (the rows stay in the window file)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        super().__init__(
            KafkaWindowSource(manifest.topic, manifest.offsets),
            name=f"window-{manifest.window}",
            digest=manifest.digest,
            schema=WINDOW_SCHEMA,
        )

    @property
    def profile(self) -> dict[str, Any]:
        """Shown in the UI's dataset drawer, which does not show a source of its own kind."""
        m = self.manifest
        return {
            "num_rows": m.rows,
            "first_invoice_date": m.first_invoice_date,
            "last_invoice_date": m.last_invoice_date,
            "source": self.source.to_dict()["uri"],
        }

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}
