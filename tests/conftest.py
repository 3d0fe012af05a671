"""Fixtures shared by every test file: the real Kafka broker (see infra/kafka_broker.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.kafka_broker import Broker, cluster_answers, free_port_pair, start_broker, stop_broker

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The shared broker's bootstrap address; fails loudly (never skips) when it does not answer."""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP
    if not cluster_answers(bootstrap, timeout=10):
        pytest.fail(
            f"no Kafka broker answers at {bootstrap}: run `make kafka-up` first "
            "(or set KAFKA_BOOTSTRAP_SERVERS to a running cluster)",
            pytrace=False,
        )
    return bootstrap


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own (free ports, state in tmp_path), for stopping and restarting."""
    broker = start_broker(free_port_pair(), tmp_path / "kafka")
    try:
        yield broker
    finally:
        stop_broker(broker.state_dir)


@pytest.fixture
def unique_topic() -> Callable[[str], str]:
    """``unique_topic("retail")`` -> ``"retail-3f9c0a1b2c4d"``: no test sees another's records."""

    def make(prefix: str = "test") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make
