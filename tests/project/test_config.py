"""Configuration is read in one place, pipelines/config.py, and each default is written once."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from pipelines.config import PROJECT_ROOT, Settings


def test_kafka_port_moves_the_local_broker_and_its_clients(monkeypatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_PORT", "9192")
    settings = Settings.from_env()

    assert (settings.kafka_port, settings.kafka_bootstrap_servers) == (9192, "127.0.0.1:9192")
    assert settings.kafka_is_local


def test_kafka_brokers_names_every_node_of_the_local_cluster(monkeypatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_PORT", "9192")
    monkeypatch.setenv("KAFKA_BROKERS", "3")
    settings = Settings.from_env()

    nodes = "127.0.0.1:9192,127.0.0.1:9194,127.0.0.1:9196"
    assert (settings.kafka_brokers, settings.kafka_bootstrap_servers) == (3, nodes)
    assert settings.kafka_is_local


@pytest.mark.parametrize("value", ["0", "three", "-1", "2.5"])
def test_a_bad_count_is_refused_by_name(monkeypatch, value: str) -> None:
    monkeypatch.setenv("KAFKA_BROKERS", value)
    with pytest.raises(ValueError, match=f"KAFKA_BROKERS='{value}': expected a whole number >= 1"):
        Settings.from_env()


def test_another_cluster_is_not_the_local_broker(monkeypatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker1:9092,broker2:9092")
    monkeypatch.delenv("KAFKA_PORT", raising=False)
    settings = Settings.from_env()

    assert settings.kafka_bootstrap_servers == "broker1:9092,broker2:9092"
    assert not settings.kafka_is_local


@pytest.mark.parametrize(
    "name", ["KAFKA_HOME", "JAVA_HOME", "KAFKA_HEAP_OPTS", "KAFKA_PORT", "KAFKA_BROKERS"]
)
def test_blank_means_unset(monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, "  ")
    field = name.lower()
    assert getattr(Settings.from_env(), field) == getattr(Settings(), field)


def test_the_cli_prints_one_setting_or_all() -> None:
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": "sqlite:////tmp/x.db"}
    command = [sys.executable, "-m", "pipelines.config"]
    one = subprocess.run(
        [*command, "mlflow_tracking_uri"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    every = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    unknown = subprocess.run(
        [*command, "nope"], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )

    assert one.stdout == "sqlite:////tmp/x.db\n"
    assert "kafka_bootstrap_servers  127.0.0.1:9092" in every.stdout
    assert unknown.returncode == 2 and "unknown setting 'nope'" in unknown.stderr


def test_infra_reads_the_environment_only_through_the_config() -> None:
    reads = re.compile(r"os\.environ\.get|os\.environ\[|os\.getenv|environ\.get\(")
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sorted((PROJECT_ROOT / "infra").glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if reads.search(line)
    ]
    assert offenders == []
