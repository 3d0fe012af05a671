"""The local Kafka of infra/kafka_broker.py: it serves, stops cleanly and keeps its data; `up`
(and the test session) start one only where the configuration names the local cluster and none
answers. (A three-node cluster losing a broker mid-stream: tests/ingest/test_stream.py.)"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

from infra.errors import BrokerError
from infra.java import java_major
from infra.kafka_broker import (
    KafkaCluster,
    ensure_cluster,
    main,
    running_cluster,
    start_cluster,
    stop_cluster,
)
from infra.kafka_runtime import fetch_runtime
from infra.ports import free_port_pair, port_in_use
from pipelines.config import Settings

pytestmark = pytest.mark.kafka


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    with KafkaAdminClient(bootstrap_servers=bootstrap) as admin:
        admin.create_topics(
            {topic: {"num_partitions": 1, "replication_factor": 1}}, wait_for_metadata=True
        )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for value in values:
        producer.send(topic, value)
    producer.flush()
    producer.close()


def consume_all(bootstrap: str, topic: str, expected: int, timeout: float = 20) -> list[bytes]:
    """Read partition 0 of ``topic`` from the beginning until ``expected`` records (or timeout)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        values: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(values) < expected and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values += [record.value for record in records]
        return values
    finally:
        consumer.close()


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_serves_stops_and_keeps_messages_across_restart(private_broker: KafkaCluster, unique_topic):
    (node,) = private_broker.nodes
    node_dir = private_broker.state_dir / "node-1"
    topic = unique_topic("broker")
    values = [f"message-{i}".encode() for i in range(5)]
    produce(private_broker.bootstrap, topic, values)
    assert consume_all(private_broker.bootstrap, topic, len(values)) == values
    # The JVM's own output stays empty: in particular no SLF4J "no binding" warning, which would
    # mean the broker logs nowhere (see the logging binding in infra/kafka/pom.xml).
    assert (node_dir / "logs" / "broker.out").read_text() == ""
    assert "Kafka Server started" in (node_dir / "logs" / "server.log").read_text()

    assert stop_cluster(private_broker.state_dir) is True
    assert process_gone(node.pid)
    assert not (node_dir / "broker.pid").exists()
    assert not port_in_use(private_broker.port)
    assert not port_in_use(private_broker.port + 1)

    # Its storage belongs to a one-node cluster: three nodes from it are refused, by name.
    with pytest.raises(BrokerError, match="holds a 1-node Kafka cluster, not a 3-node one"):
        start_cluster(private_broker.port, private_broker.state_dir, brokers=3)

    restarted = start_cluster(private_broker.port, private_broker.state_dir)
    assert restarted.nodes[0].pid != node.pid
    assert consume_all(restarted.bootstrap, topic, len(values)) == values


def test_up_is_idempotent(private_broker: KafkaCluster, monkeypatch, capsys):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAFKA_BROKERS", raising=False)
    args = ["up", "--port", str(private_broker.port), "--state-dir", str(private_broker.state_dir)]
    (node,) = private_broker.nodes

    assert main(args) == 0
    assert f"already running at {private_broker.bootstrap} (pid {node.pid})" in (
        capsys.readouterr().out
    )
    assert start_cluster(private_broker.port, private_broker.state_dir) == private_broker
    pid_file = private_broker.state_dir / "node-1" / "broker.pid"
    assert pid_file.read_text().strip() == str(node.pid)
    assert main(["status", "--state-dir", str(private_broker.state_dir)]) == 0


def test_up_with_external_cluster_starts_nothing(
    private_broker: KafkaCluster, tmp_path, monkeypatch
):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", private_broker.bootstrap)
    assert main(["up", "--port", str(free_port_pair()), "--state-dir", str(tmp_path / "x")]) == 0
    assert not (tmp_path / "x").exists()


def test_stop_when_not_running_is_a_noop(tmp_path: Path, capsys):
    assert stop_cluster(tmp_path) is False
    assert "no Kafka node running" in capsys.readouterr().out

    # A stale pid file naming a live process that is not this state dir's node (this very
    # pytest process): it must not be signalled, and the stale file goes away.
    pid_file = tmp_path / "node-1" / "broker.pid"
    pid_file.parent.mkdir()
    pid_file.write_text(f"{os.getpid()}\n")
    assert stop_cluster(tmp_path) is False
    assert "stale pid file" in capsys.readouterr().out
    assert not pid_file.exists()


def test_port_taken_by_something_else_is_named(tmp_path: Path):
    port = free_port_pair()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(BrokerError, match=f"port {port} .* already in use"):
            start_cluster(port, tmp_path)


def test_kafka_home_without_libs_is_a_clear_error(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_HOME", str(tmp_path))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(BrokerError, match="KAFKA_HOME=.* has no .*kafka_2.13-"):
        fetch_runtime()

    args = ["up", "--port", str(free_port_pair()), "--state-dir", str(tmp_path / "state")]
    assert main(args) == 1
    assert "error: KAFKA_HOME=" in capsys.readouterr().err


def test_ensure_starts_a_broker_only_where_none_answers(tmp_path: Path, capsys):
    port = free_port_pair()
    settings = Settings(kafka_port=port, kafka_bootstrap_servers=f"127.0.0.1:{port}")
    bootstrap, started = ensure_cluster(tmp_path / "first", settings=settings)
    try:
        assert started is not None and bootstrap == started.bootstrap == f"127.0.0.1:{port}"
        assert running_cluster(tmp_path / "first") == started

        # Again from the same state dir: that broker, nothing new to stop later.
        assert ensure_cluster(tmp_path / "first", settings=settings) == (bootstrap, None)
        # From another state dir: the broker answering there is used, nothing is started.
        assert ensure_cluster(tmp_path / "second", settings=settings) == (bootstrap, None)
        assert "started elsewhere answers" in capsys.readouterr().out
        assert not (tmp_path / "second").exists()
    finally:
        stop_cluster(tmp_path / "first")


def test_ensure_never_starts_a_broker_for_another_cluster(tmp_path: Path):
    unanswered = f"127.0.0.1:{free_port_pair()}"
    settings = Settings(kafka_bootstrap_servers=unanswered)
    assert not settings.kafka_is_local

    with pytest.raises(BrokerError, match=f"KAFKA_BOOTSTRAP_SERVERS={unanswered} is set but"):
        ensure_cluster(tmp_path, settings=settings)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('java version "1.8.0_392"', 8),
        ('openjdk version "21" 2023-09-19', 21),
        ("no version here", None),
    ],
)
def test_java_major_version(output: str, major: int | None):
    assert java_major(output) == major
