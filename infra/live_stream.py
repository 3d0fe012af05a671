"""A live stream on this machine: the stream service consuming a topic of its own while a producer
replays a dataset into it at a speedup. What `make demo-live` (infra/demo_live.py) and
`make bench-freshness` (bench/freshness.py) both start, with the same defaults.

The windows are calendar months of InvoiceDate (`--window-by event-time --window-period month`):
the default dataset spans December 2010 to December 2011, so one replay gives 13 windows. At the
default speedup of 100,000 a month of the replay passes in about 26 s, more than the service needs
per window on the 2-core machine, so windows do not queue behind one another; the whole replay
takes about 5.5 minutes. The server polls the registry every POLL_SECONDS.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.background import Background
from pipelines.config import Settings
from pipelines.ingest.producer import ensure_topic

WINDOW_FLAGS = ("--window-by", "event-time", "--window-period", "month")
DEFAULT_SPEEDUP = 100_000.0
POLL_SECONDS = 1.0  # the server's registry poll (`--poll-interval`) for a live stream
PARTITIONS = 3  # the producer's default
SERVICE_START_TIMEOUT = 300.0  # seconds for a SparkSession and a consumer on a busy machine


def create_store(tracking_uri: str) -> None:
    """Open the MLflow store once, creating it if new, before the server's workers open it all
    at once: two processes creating the same new SQLite store race on its schema, and the loser
    exits (which stops the server)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri).search_experiments(max_results=1)


@dataclass(frozen=True)
class LiveStream:
    """Where a live stream runs: its cluster, topic, consumer group and windows directory."""

    settings: Settings  # the cluster, topic and group; the MLflow store comes from the environment
    windows_dir: Path

    def service_command(self) -> list[str]:
        """`python -m pipelines.stream` on the topic, into the windows directory, until stopped;
        run it with `service_env()`."""
        return [
            sys.executable, "-m", "pipelines.stream", *WINDOW_FLAGS,
            "--topic", self.settings.kafka_topic,
            "--bootstrap-servers", self.settings.kafka_bootstrap_servers,
            "--windows-dir", str(self.windows_dir),
        ]  # fmt: skip

    def service_env(self) -> dict[str, str]:
        return {"KAFKA_GROUP": self.settings.kafka_group}

    def producer_command(self, dataset: Path, speedup: float) -> list[str]:
        """`python -m pipelines.produce --speedup X` of `dataset` into the topic."""
        return [
            sys.executable, "-m", "pipelines.produce", "--input", str(dataset),
            "--topic", self.settings.kafka_topic,
            "--bootstrap-servers", self.settings.kafka_bootstrap_servers,
            "--speedup", str(speedup), "--no-progress",
        ]  # fmt: skip

    def create_topic(self) -> None:
        """Before the service starts: its consumer joins the group only once the topic exists."""
        ensure_topic(self.settings.kafka_bootstrap_servers, self.settings.kafka_topic, PARTITIONS)

    def wait_until_consuming(self, service: Background) -> None:
        """Return once the service's consumer has joined the group (after its SparkSession), so
        that the replay's first window closes while the service is there to see it."""
        deadline = time.monotonic() + SERVICE_START_TIMEOUT
        while not self.consuming():
            if service.exit_code() is not None:
                raise RuntimeError(service.failure("the stream service exited"))
            if time.monotonic() > deadline:
                raise RuntimeError(
                    service.failure(f"its consumer did not join in {SERVICE_START_TIMEOUT:.0f} s")
                )
            time.sleep(1)

    def consuming(self) -> bool:
        """Whether a consumer of the group holds the topic's partitions (the group is stable)."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap_servers)
        try:
            group = admin.describe_groups([self.settings.kafka_group])[self.settings.kafka_group]
        except KafkaError:  # no coordinator yet: nobody has joined
            return False
        finally:
            admin.close()
        return group.get("group_state") == "Stable"
