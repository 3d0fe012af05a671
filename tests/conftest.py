"""Fixtures shared by every test file: the Kafka cluster the configuration names.

The address comes from pipelines/config.py, as for every other part of the project:
KAFKA_BOOTSTRAP_SERVERS, else the local broker on 127.0.0.1:KAFKA_PORT (see infra/kafka_broker.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.errors import BrokerError
from infra.kafka_broker import Broker, ensure_broker, running_broker, start_broker, stop_broker
from infra.ports import free_port_pair
from pipelines.config import PROJECT_ROOT

# Where the test session keeps the broker it starts: apart from `make kafka-up`'s .kafka/, so that
# a broker running from here was started by a test session and is that session's to stop.
SESSION_BROKER_DIR = PROJECT_ROOT / "test-artifacts" / "kafka"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The configured cluster's bootstrap address, started for this session if need be.

    When the configuration names the local broker and none answers there, one is started from
    SESSION_BROKER_DIR and stopped when the session ends, so `make test` alone needs nothing
    started first; a broker someone else started is used and left running. Another cluster
    (KAFKA_BOOTSTRAP_SERVERS) that does not answer fails loudly: nothing is skipped.
    """
    try:
        bootstrap, started = ensure_broker(SESSION_BROKER_DIR)
    except BrokerError as error:
        pytest.fail(f"no Kafka cluster for the tests: {error}", pytrace=False)
    # One left running by a session that was killed is this session's to stop as well.
    started = started or running_broker(SESSION_BROKER_DIR)
    try:
        yield bootstrap
    finally:
        if started is not None:
            stop_broker(started.state_dir)


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
