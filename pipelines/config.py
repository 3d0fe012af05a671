"""One place for configuration: environment variables with their defaults (docs/architecture.md).

CLI flags override these; every module asks `Settings.from_env()` instead of reading os.environ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# How many windows a replay is cut into, and so how many models a training registers (model1..3).
DEFAULT_WINDOWS = 3


def env_or(name: str, default: str) -> str:
    """The variable's value, or `default` when it is unset or blank."""
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
    def dataset(self) -> Path:
        """The default dataset: what `pipelines.generate` writes and the producer replays."""
        return self.data_dir / "online_retail.csv"

    @property
    def windows_dir(self) -> Path:
        return self.data_dir / "windows"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            # Unset, it is the local broker of `make kafka-up`, on KAFKA_PORT when that is set.
            kafka_bootstrap_servers=env_or(
                "KAFKA_BOOTSTRAP_SERVERS", f"localhost:{env_or('KAFKA_PORT', '9092')}"
            ),
            kafka_topic=env_or("KAFKA_TOPIC", cls.kafka_topic),
            kafka_group=env_or("KAFKA_GROUP", cls.kafka_group),
            mlflow_tracking_uri=env_or("MLFLOW_TRACKING_URI", cls.mlflow_tracking_uri),
            spark_master=env_or("SPARK_MASTER", cls.spark_master),
            model_name=env_or("MODEL_NAME", cls.model_name),
            experiment_name=env_or("MLFLOW_EXPERIMENT_NAME", cls.experiment_name),
            data_dir=Path(env_or("DATA_DIR", str(PROJECT_ROOT / "data"))),
        )


def sqlite_tracking_uri(folder: Path) -> str:
    """The tracking URI of a SQLite MLflow store in `folder` (created if missing). Training keeps
    the runs' artifacts beside the file (see pipelines/training/tracking.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve()}/mlflow.db"
