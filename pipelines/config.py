"""One place for configuration: environment variables with their defaults (docs/architecture.md).

CLI flags override these; every module asks `Settings.from_env()` instead of reading os.environ,
infra/ included (the local broker's port, Kafka's jars, Java).

    python -m pipelines.config          # every setting as this environment resolves it
    python -m pipelines.config NAME     # one of them (the Makefile asks for mlflow_tracking_uri)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# How many windows a replay is cut into, and so how many models a training registers (model1..3).
DEFAULT_WINDOWS = 3
# The local Kafka of `make kafka-up` listens on 127.0.0.1 only. Node i (1, 2, ...) of it takes
# two ports from KAFKA_PORT on: clients on KAFKA_PORT + 2(i - 1), its controller one above, so a
# one-node cluster is 9092/9093 and a three-node one 9092..9097.
LOCAL_HOST = "127.0.0.1"
DEFAULT_KAFKA_PORT = 9092
# Spark's Kafka connector, which pip's pyspark lacks: `make install` fetches its jars through Maven
# (infra/spark_kafka.py) into this folder, where the Spark engine of pipelines.consume finds them.
SPARK_KAFKA_JARS = PROJECT_ROOT / "infra" / "spark-kafka" / "lib"
SPARK_KAFKA_CONNECTOR = "spark-sql-kafka-0-10_2.13-*.jar"  # the connector's own jar, by version
# The Spark engine's micro-batches: at most this many Kafka messages each (`--batch-messages`).
DEFAULT_BATCH_MESSAGES = 100_000


def kafka_node_port(port: int, node_id: int) -> int:
    """The client port of node `node_id` of the local cluster whose first node listens on `port`."""
    return port + 2 * (node_id - 1)


def local_kafka_bootstrap(port: int, brokers: int) -> str:
    """Every node of the local cluster, as clients name them: a client that knows only a dead
    node could not start."""
    nodes = range(1, brokers + 1)
    return ",".join(f"{LOCAL_HOST}:{kafka_node_port(port, node)}" for node in nodes)


def env_or(name: str, default: str) -> str:
    """The variable's value, or `default` when it is unset or blank."""
    value = os.environ.get(name, "").strip()
    return value or default


def _count(name: str, default: int) -> int:
    """A whole number >= 1 from the environment, or `default`; anything else is refused by name."""
    value = env_or(name, str(default))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number >= 1")
    return int(value)


def _path_or_none(name: str) -> Path | None:
    value = env_or(name, "")
    return Path(value) if value else None


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = local_kafka_bootstrap(DEFAULT_KAFKA_PORT, 1)
    kafka_topic: str = "retail-transactions"
    kafka_group: str = "segmentation-windows"
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    spark_master: str = "local[*]"
    model_name: str = "customer-segmentation"
    experiment_name: str = "customer-segmentation"
    data_dir: Path = field(default=PROJECT_ROOT / "data")
    # The local Kafka (infra/kafka_broker.py): first port, node count, jars, each node's heap.
    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_brokers: int = 1
    kafka_home: Path | None = None  # an unpacked Kafka distribution; None: fetch through Maven
    kafka_heap_opts: str = "-Xmx1g -Xms256m"
    java_home: Path | None = None  # None: `java` on PATH

    @property
    def dataset(self) -> Path:
        """The default dataset: what `pipelines.generate` writes and the producer replays."""
        return self.data_dir / "online_retail.csv"

    @property
    def windows_dir(self) -> Path:
        return self.data_dir / "windows"

    @property
    def local_kafka(self) -> str:
        """The nodes of the local cluster `make kafka-up` (and `make test`) may start."""
        return local_kafka_bootstrap(self.kafka_port, self.kafka_brokers)

    @property
    def kafka_is_local(self) -> bool:
        """Whether the cluster is the local broker: else infra/ starts nothing and only checks."""
        return self.kafka_bootstrap_servers == self.local_kafka

    @classmethod
    def from_env(cls) -> Settings:
        kafka_port = _count("KAFKA_PORT", cls.kafka_port)
        kafka_brokers = _count("KAFKA_BROKERS", cls.kafka_brokers)
        local = local_kafka_bootstrap(kafka_port, kafka_brokers)
        return cls(
            # Unset, it is the local cluster of `make kafka-up`: its nodes from KAFKA_PORT on.
            kafka_bootstrap_servers=env_or("KAFKA_BOOTSTRAP_SERVERS", local),
            kafka_topic=env_or("KAFKA_TOPIC", cls.kafka_topic),
            kafka_group=env_or("KAFKA_GROUP", cls.kafka_group),
            mlflow_tracking_uri=env_or("MLFLOW_TRACKING_URI", cls.mlflow_tracking_uri),
            spark_master=env_or("SPARK_MASTER", cls.spark_master),
            model_name=env_or("MODEL_NAME", cls.model_name),
            experiment_name=env_or("MLFLOW_EXPERIMENT_NAME", cls.experiment_name),
            data_dir=Path(env_or("DATA_DIR", str(PROJECT_ROOT / "data"))),
            kafka_port=kafka_port,
            kafka_brokers=kafka_brokers,
            kafka_home=_path_or_none("KAFKA_HOME"),
            kafka_heap_opts=env_or("KAFKA_HEAP_OPTS", cls.kafka_heap_opts),
            java_home=_path_or_none("JAVA_HOME"),
        )


def sqlite_tracking_uri(folder: Path) -> str:
    """The tracking URI of a SQLite MLflow store in `folder` (created if missing). Training keeps
    the runs' artifacts beside the file (see pipelines/training/tracking.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve()}/mlflow.db"


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    names = [f.name for f in fields(Settings)]
    if argv:
        unknown = [name for name in argv if name not in names]
        if unknown:
            print(f"unknown setting {unknown[0]!r}; one of: {', '.join(names)}", file=sys.stderr)
            return 2
        for name in argv:
            print(getattr(settings, name))
        return 0
    for name in names:
        print(f"{name:<24} {getattr(settings, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
