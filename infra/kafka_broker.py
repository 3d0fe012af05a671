"""A real single-node Apache Kafka broker (KRaft mode) for development and tests: its lifecycle.

Why: the pipeline and its integration tests talk to a real broker, and a laptop should not need
Docker or a hand-unpacked tarball for that. The jars come from infra/kafka_runtime.py (Maven, or
``KAFKA_HOME``), Java from infra/java.py, and the broker runs as a detached JVM that outlives this
command.

    python -m infra.kafka_broker up|down|status [--port 9092] [--state-dir .kafka]

Ports: clients use ``127.0.0.1:<port>``; the broker's own KRaft controller listens on
``127.0.0.1:<port + 1>``. Both bind to loopback only. State (default ``<repo>/.kafka``,
git-ignored): config, data, logs and PID file, laid out in infra/kafka_state.py.

Configuration comes from pipelines/config.py: ``KAFKA_PORT`` (default port),
``KAFKA_BOOTSTRAP_SERVERS`` (another cluster than the local broker: ``up`` starts nothing and only
checks it answers), ``KAFKA_HOME``, ``JAVA_HOME``, ``KAFKA_HEAP_OPTS``.

About 320 lines on purpose: the lifecycle (start, wait until it answers, stop exactly that PID,
``ensure_broker``) and its CLI read best together; the runtime, the state dir, Java, ports and
processes are modules of their own.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.errors import BrokerError
from infra.java import find_java
from infra.kafka_runtime import fetch_runtime, java_command
from infra.kafka_state import (
    format_storage,
    log_tail,
    pid_file,
    properties_file,
    read_port,
    write_server_properties,
)
from infra.ports import LOOPBACK, accepts_tcp, port_in_use
from infra.processes import cmdline, is_alive, read_pid
from pipelines.config import PROJECT_ROOT, Settings

DEFAULT_STATE_DIR = PROJECT_ROOT / ".kafka"


@dataclass(frozen=True)
class Broker:
    """A broker started from ``state_dir`` and answering at ``bootstrap``."""

    pid: int
    bootstrap: str
    state_dir: Path

    @property
    def port(self) -> int:
        return int(self.bootstrap.rsplit(":", 1)[1])


def _say(message: str) -> None:
    """Progress line for the person at the terminal (stdout, unbuffered)."""
    print(message, flush=True)


# --- is it there, does it answer ----------------------------------------------------------------


def _is_our_broker(pid: int, state_dir: Path) -> bool:
    """Guard against PID reuse: the process must be kafka.Kafka run on this state dir's config."""
    args = cmdline(pid)
    return "kafka.Kafka" in args and str(properties_file(state_dir)) in args


def running_broker(state_dir: Path) -> Broker | None:
    """The broker started from ``state_dir`` if its JVM is alive, else None."""
    state_dir = state_dir.resolve()
    pid = read_pid(pid_file(state_dir))
    if pid is None or not is_alive(pid) or not _is_our_broker(pid, state_dir):
        return None
    return Broker(pid=pid, bootstrap=f"{LOOPBACK}:{read_port(state_dir)}", state_dir=state_dir)


def cluster_answers(bootstrap: str, timeout: float = 10.0) -> bool:
    """Whether a Kafka cluster at ``bootstrap`` answers a real request with a live broker.

    An open port is not enough: the broker listens before it has joined its KRaft quorum, so this
    asks for the cluster description and wants at least one unfenced broker in it.
    """
    from kafka import KafkaAdminClient  # imported here: `down` and `status` work without it
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout * 1000), 1000)
    admin = None
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="kafka-broker-check",
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=timeout_ms,
            reconnect_backoff_max_ms=1000,
        )
        brokers = admin.describe_cluster().get("brokers") or []
        return any(not broker.get("is_fenced", False) for broker in brokers)
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        if admin is not None:
            admin.close()


def _local_answers(port: int, timeout: float = 10.0) -> bool:
    """cluster_answers for 127.0.0.1:port, at once False when nothing even listens there."""
    return accepts_tcp(LOOPBACK, port) and cluster_answers(f"{LOOPBACK}:{port}", timeout)


# --- start and stop -----------------------------------------------------------------------------


def start_broker(
    port: int, state_dir: Path, timeout: float = 60, settings: Settings | None = None
) -> Broker:
    """Start a broker on ``127.0.0.1:port`` (controller on ``port + 1``) from ``state_dir``.

    Returns once the broker answers a Kafka request. Idempotent: if this state dir's broker already
    runs on ``port``, it is returned as is. On failure the JVM is stopped and the error carries the
    tail of its log.
    """
    settings = settings or Settings.from_env()
    state_dir = state_dir.resolve()
    existing = running_broker(state_dir)
    if existing is not None:
        if existing.port != port:
            raise BrokerError(
                f"the broker of {state_dir} already runs at {existing.bootstrap} "
                f"(pid {existing.pid}), not on port {port}; stop it first"
            )
        return existing

    for needed in (port, port + 1):
        if port_in_use(needed):
            raise BrokerError(
                f"port {needed} on {LOOPBACK} is already in use by another process; the broker "
                f"needs {port} (clients) and {port + 1} (its controller). Free it, or choose "
                "another port with --port / KAFKA_PORT"
            )

    java = find_java(settings)
    classpath = fetch_runtime(settings)
    logs = state_dir / "logs"
    (state_dir / "data").mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    properties = write_server_properties(state_dir, port)
    format_storage(
        java_command(java, classpath, logs, settings.kafka_heap_opts), state_dir, properties
    )

    _say(f"starting Kafka broker on {LOOPBACK}:{port} (controller on {port + 1}) ...")
    started = time.monotonic()
    command = java_command(
        java, classpath, logs, settings.kafka_heap_opts, "kafka.Kafka", str(properties)
    )
    with open(logs / "broker.out", "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: Ctrl-C in this terminal does not reach it
        )
    pid_file(state_dir).write_text(f"{process.pid}\n")
    broker = Broker(pid=process.pid, bootstrap=f"{LOOPBACK}:{port}", state_dir=state_dir)

    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pid_file(state_dir).unlink(missing_ok=True)
            raise BrokerError(
                f"the Kafka JVM exited with code {process.returncode} while starting\n"
                + log_tail(state_dir)
            )
        remaining = deadline - time.monotonic()
        if accepts_tcp(LOOPBACK, port) and cluster_answers(broker.bootstrap, min(5, remaining)):
            _say(
                f"broker up at {broker.bootstrap} (pid {broker.pid}) "
                f"in {time.monotonic() - started:.1f} s; log: {logs / 'server.log'}"
            )
            return broker
        time.sleep(0.25)

    stop_broker(state_dir)
    raise BrokerError(
        f"the broker did not answer at {broker.bootstrap} within {timeout:.0f} s\n"
        + log_tail(state_dir)
    )


def stop_broker(state_dir: Path, timeout: float = 30) -> bool:
    """Stop the broker started from ``state_dir``: SIGTERM its PID, SIGKILL after ``timeout`` s.

    Only that exact PID is signalled, and only if it still is this state dir's kafka.Kafka JVM.
    Returns whether a broker was stopped; not running is a no-op with a message.
    """
    state_dir = state_dir.resolve()
    pid_path = pid_file(state_dir)
    pid = read_pid(pid_path)
    if pid is None:
        _say(f"no broker running from {state_dir} (no pid file)")
        return False
    if not is_alive(pid) or not _is_our_broker(pid, state_dir):
        _say(f"no broker running from {state_dir} (stale pid file for pid {pid}, removed)")
        pid_path.unlink(missing_ok=True)
        return False

    _say(f"stopping broker (pid {pid}) ...")
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # Kafka's shutdown hook: controlled shutdown, logs flushed
    while is_alive(pid) and time.monotonic() - started < timeout:
        time.sleep(0.1)
    if is_alive(pid):
        _say(f"broker (pid {pid}) still running after {timeout:.0f} s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while is_alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(0.1)
    pid_path.unlink(missing_ok=True)
    _say(f"broker stopped (pid {pid}) in {time.monotonic() - started:.1f} s")
    return True


def ensure_broker(
    state_dir: Path, port: int | None = None, settings: Settings | None = None
) -> tuple[str, Broker | None]:
    """A cluster that answers, started here if need be: ``(bootstrap, the broker started now)``.

    What `up` and the test session (tests/conftest.py) do. The configured cluster when it is not
    the local broker: it must answer, nothing is started. Else the local broker on ``port``
    (default ``KAFKA_PORT``): this state dir's if it runs, any broker already answering there, or
    one started now from ``state_dir``, the only case that returns a Broker to stop later.
    """
    settings = settings or Settings.from_env()
    if not settings.kafka_is_local:
        external = settings.kafka_bootstrap_servers
        if cluster_answers(external, timeout=10):
            _say(f"KAFKA_BOOTSTRAP_SERVERS={external} answers; using it, started nothing")
            return external, None
        raise BrokerError(
            f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no Kafka cluster answers there; "
            "start it, or unset the variable to run a local broker"
        )
    port = port or settings.kafka_port
    existing = running_broker(state_dir)
    if existing is not None and existing.port == port:
        _say(f"broker already running at {existing.bootstrap} (pid {existing.pid})")
        return existing.bootstrap, None
    if existing is None and _local_answers(port):
        _say(f"a broker started elsewhere answers at {LOOPBACK}:{port}; using it, started nothing")
        return f"{LOOPBACK}:{port}", None
    broker = start_broker(port, state_dir, settings=settings)
    return broker.bootstrap, broker


# --- command line -------------------------------------------------------------------------------


def _cmd_status(state_dir: Path, port: int, settings: Settings) -> int:
    if not settings.kafka_is_local:
        external = settings.kafka_bootstrap_servers
        answers = cluster_answers(external, timeout=10)
        _say(f"KAFKA_BOOTSTRAP_SERVERS={external}: {'answers' if answers else 'does not answer'}")
        return 0 if answers else 3
    broker = running_broker(state_dir)
    if broker is None:
        if _local_answers(port, timeout=5):
            _say(f"a broker started elsewhere answers at {LOOPBACK}:{port}; none from {state_dir}")
            return 0
        _say(f"no broker running from {state_dir}, none answers at {LOOPBACK}:{port}")
        return 3
    answers = cluster_answers(broker.bootstrap, timeout=5)
    state = "answers" if answers else "does not answer (yet)"
    _say(f"broker running at {broker.bootstrap} (pid {broker.pid}), {state}; state in {state_dir}")
    return 0 if answers else 3


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 3 ``status``: not running)."""
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m infra.kafka_broker",
        description="Start, stop or inspect the local single-node Kafka broker (KRaft).",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--port",
        type=int,
        default=settings.kafka_port,
        help=f"client port on {LOOPBACK}; the controller uses port+1 (default: $KAFKA_PORT or "
        f"{Settings.kafka_port})",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"config, data, logs and pid file (default: {DEFAULT_STATE_DIR})",
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            ensure_broker(state_dir, args.port, settings)
            return 0
        if args.command == "down":
            stop_broker(state_dir)
            return 0
        return _cmd_status(state_dir, args.port, settings)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
