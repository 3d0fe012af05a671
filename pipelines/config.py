"""One place for configuration: environment variables with the defaults of DESIGN.md.

CLI flags override these; every module asks `Settings.from_env()` instead of reading os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "retail-transactions"
    kafka_group: str = "segmentation-windows"
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    spark_master: str = "local[*]"
    model_name: str = "customer-segmentation"
    experiment_name: str = "customer-segmentation"
    data_dir: Path = field(default=PROJECT_ROOT / "data")

    @property
    def windows_dir(self) -> Path:
        return self.data_dir / "windows"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            # Unset, it is the local broker of `make kafka-up`, on KAFKA_PORT when that is set.
            kafka_bootstrap_servers=_env(
                "KAFKA_BOOTSTRAP_SERVERS", f"localhost:{_env('KAFKA_PORT', '9092')}"
            ),
            kafka_topic=_env("KAFKA_TOPIC", cls.kafka_topic),
            kafka_group=_env("KAFKA_GROUP", cls.kafka_group),
            mlflow_tracking_uri=_env("MLFLOW_TRACKING_URI", cls.mlflow_tracking_uri),
            spark_master=_env("SPARK_MASTER", cls.spark_master),
            model_name=_env("MODEL_NAME", cls.model_name),
            experiment_name=_env("MLFLOW_EXPERIMENT_NAME", cls.experiment_name),
            data_dir=Path(_env("DATA_DIR", str(PROJECT_ROOT / "data"))),
        )
