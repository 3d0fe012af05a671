"""A real Apache Kafka cluster (KRaft mode) of one or more nodes on 127.0.0.1: its lifecycle.

Why: the pipeline and its integration tests talk to a real cluster, and a laptop should not need
Docker or a hand-unpacked tarball for that. The jars come from infra/kafka_runtime.py (Maven, or
``KAFKA_HOME``), Java from infra/java.py, and each node runs as a detached JVM that outlives this
command.

    python -m infra.kafka_broker up|down|status [--port 9092] [--brokers 1] [--state-dir .kafka]

Every node is a combined broker and controller (infra/kafka_state.py); node i's clients use
``127.0.0.1:<port + 2(i-1)>`` and its controller the port above (``kafka_node_port``). Everything
binds to loopback only. State (default ``<repo>/.kafka``, git-ignored): a directory per node with
its config, data, logs and PID file.

Configuration comes from pipelines/config.py: ``KAFKA_PORT`` (the first node's port),
``KAFKA_BROKERS`` (the node count), ``KAFKA_BOOTSTRAP_SERVERS`` (another cluster than the local
one: ``up`` starts nothing and only checks it answers), ``KAFKA_HOME``, ``JAVA_HOME``,
``KAFKA_HEAP_OPTS`` (each node's heap).

About 450 lines on purpose: the lifecycle (start the nodes, wait until they answer, stop exactly
their PIDs, ``ensure_cluster``) and its CLI read best together; the runtime, the state dir, Java,
ports and processes are modules of their own.
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
    check_size,
    format_storage,
    formatted_brokers,
    log_tail,
    node_dir,
    node_ids,
    pid_file,
    properties_file,
    read_port,
    write_server_properties,
)
from infra.ports import LOOPBACK, accepts_tcp, port_in_use
from infra.processes import cmdline, is_alive, read_pid
from pipelines.config import PROJECT_ROOT, Settings, kafka_node_port, local_kafka_bootstrap

DEFAULT_STATE_DIR = PROJECT_ROOT / ".kafka"
# Three JVMs starting at once on a shared 2-core machine take a while; one takes a few seconds.
START_TIMEOUT_S = 180


@dataclass(frozen=True)
class Node:
    """One broker (and controller) of the local cluster: its JVM and its client port."""

    node_id: int
    pid: int
    port: int

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"


@dataclass(frozen=True)
class KafkaCluster:
    """Every node of the cluster started from ``state_dir``, all of them running."""

    state_dir: Path
    nodes: tuple[Node, ...]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def port(self) -> int:
        """The first node's client port (``--port``, ``KAFKA_PORT``)."""
        return self.nodes[0].port


def _say(message: str) -> None:
    """Progress line for the person at the terminal (stdout, unbuffered)."""
    print(message, flush=True)


# --- is it there, does it answer ----------------------------------------------------------------


def _is_our_node(pid: int, node: Path) -> bool:
    """Guard against PID reuse: the process must be kafka.Kafka run on this node's config."""
    args = cmdline(pid)
    return "kafka.Kafka" in args and str(properties_file(node)) in args


def alive_nodes(state_dir: Path) -> dict[int, Node]:
    """The nodes of ``state_dir`` whose JVM is alive, by id."""
    state_dir = state_dir.resolve()
    alive = {}
    for node_id in node_ids(state_dir):
        node = node_dir(state_dir, node_id)
        pid = read_pid(pid_file(node))
        port = read_port(node)
        if pid is not None and port is not None and is_alive(pid) and _is_our_node(pid, node):
            alive[node_id] = Node(node_id, pid, port)
    return alive


def running_cluster(state_dir: Path) -> KafkaCluster | None:
    """The cluster started from ``state_dir`` if every node it was formatted for is alive."""
    state_dir = state_dir.resolve()
    brokers = formatted_brokers(state_dir)
    alive = alive_nodes(state_dir)
    if brokers is None or sorted(alive) != list(range(1, brokers + 1)):
        return None
    return KafkaCluster(state_dir, tuple(alive[i] for i in sorted(alive)))


def cluster_answers(bootstrap: str, timeout: float = 10.0, brokers: int = 1) -> bool:
    """Whether a Kafka cluster at ``bootstrap`` answers a real request with ``brokers`` live
    brokers at least.

    An open port is not enough: a broker listens before it has joined its KRaft quorum, so this
    asks for the cluster description and counts the unfenced brokers in it.
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
        described = admin.describe_cluster().get("brokers") or []
        return sum(not broker.get("is_fenced", False) for broker in described) >= brokers
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        if admin is not None:
            admin.close()


def _local_answers(port: int, timeout: float = 10.0) -> bool:
    """cluster_answers for 127.0.0.1:port, at once False when nothing even listens there."""
    return accepts_tcp(LOOPBACK, port) and cluster_answers(f"{LOOPBACK}:{port}", timeout)


# --- start and stop -----------------------------------------------------------------------------


def start_cluster(
    port: int,
    state_dir: Path,
    brokers: int = 1,
    timeout: float = START_TIMEOUT_S,
    settings: Settings | None = None,
) -> KafkaCluster:
    """Start a cluster of ``brokers`` nodes from ``state_dir``, the first on ``127.0.0.1:port``.

    Returns once every node is an unfenced broker of the cluster. Idempotent: nodes of this state
    dir that already run are kept, the others started (so ``up`` brings a dead node back). On
    failure the JVMs started here are stopped and the error carries the tail of their logs.
    """
    settings = settings or Settings.from_env()
    state_dir = state_dir.resolve()
    if brokers < 1:
        raise BrokerError(f"a cluster needs at least one broker, not {brokers}")
    check_size(state_dir, brokers)
    alive = alive_nodes(state_dir)
    for node in alive.values():
        if node.port != kafka_node_port(port, node.node_id):
            raise BrokerError(
                f"node {node.node_id} of {state_dir} already runs at {node.address} (pid "
                f"{node.pid}), not on port {kafka_node_port(port, node.node_id)}; stop it first"
            )
    missing = [i for i in range(1, brokers + 1) if i not in alive]
    if not missing:
        return KafkaCluster(state_dir, tuple(alive[i] for i in sorted(alive)))

    for node_id in missing:
        client = kafka_node_port(port, node_id)
        for needed in (client, client + 1):
            if port_in_use(needed):
                raise BrokerError(
                    f"port {needed} on {LOOPBACK} is already in use by another process; node "
                    f"{node_id} needs {client} (clients) and {client + 1} (its controller). Free "
                    "it, or choose another port with --port / KAFKA_PORT"
                )

    java = find_java(settings)
    classpath = fetch_runtime(settings)
    for node_id in range(1, brokers + 1):
        node = node_dir(state_dir, node_id)
        (node / "data").mkdir(parents=True, exist_ok=True)
        (node / "logs").mkdir(parents=True, exist_ok=True)
        if node_id in missing:
            write_server_properties(state_dir, node_id, port, brokers)
    format_storage(
        lambda logs: java_command(java, classpath, logs, settings.kafka_heap_opts),
        state_dir,
        brokers,
    )

    bootstrap = local_kafka_bootstrap(port, brokers)
    _say(f"starting Kafka: {_describe(port, missing)} ...")
    started = time.monotonic()
    processes = {i: _launch(java, classpath, state_dir, i, settings) for i in missing}

    deadline = started + timeout
    while time.monotonic() < deadline:
        for node_id, process in processes.items():
            if process.poll() is not None:
                _stop_nodes(state_dir, list(processes))
                raise BrokerError(
                    f"the JVM of node {node_id} exited with code {process.returncode} while "
                    f"starting\n" + log_tail(node_dir(state_dir, node_id))
                )
        remaining = deadline - time.monotonic()
        listening = all(accepts_tcp(LOOPBACK, kafka_node_port(port, i)) for i in processes)
        if listening and cluster_answers(bootstrap, min(5, remaining), brokers):
            cluster = running_cluster(state_dir)
            if cluster is not None:
                pids = ", ".join(f"{node.node_id}: pid {node.pid}" for node in cluster.nodes)
                _say(
                    f"Kafka up at {cluster.bootstrap} ({pids}) in "
                    f"{time.monotonic() - started:.1f} s; logs: {state_dir}/node-*/logs/"
                )
                return cluster
        time.sleep(0.25)

    _stop_nodes(state_dir, list(processes))
    tails = "\n".join(log_tail(node_dir(state_dir, node_id), 15) for node_id in processes)
    raise BrokerError(
        f"the cluster did not answer at {bootstrap} with {brokers} brokers within "
        f"{timeout:.0f} s\n{tails}"
    )


def _describe(port: int, ids: list[int]) -> str:
    return ", ".join(
        f"node {i} on {LOOPBACK}:{kafka_node_port(port, i)} "
        f"(controller {kafka_node_port(port, i) + 1})"
        for i in ids
    )


def _launch(
    java: str, classpath: Path, state_dir: Path, node_id: int, settings: Settings
) -> subprocess.Popen:
    """Start node ``node_id``'s JVM, detached, and write its PID file."""
    node = node_dir(state_dir, node_id)
    logs = node / "logs"
    command = java_command(
        java, classpath, logs, settings.kafka_heap_opts, "kafka.Kafka", str(properties_file(node))
    )
    with open(logs / "broker.out", "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=node,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: Ctrl-C in this terminal does not reach it
        )
    pid_file(node).write_text(f"{process.pid}\n")
    return process


def stop_cluster(state_dir: Path, timeout: float = 30) -> bool:
    """Stop every node started from ``state_dir``: SIGTERM all, SIGKILL after ``timeout`` s.

    Only the exact PIDs in the nodes' PID files are signalled, and only while they still are this
    state dir's kafka.Kafka JVMs. Returns whether a node was stopped; none running is a no-op with
    a message.
    """
    state_dir = state_dir.resolve()
    stopped = _stop_nodes(state_dir, node_ids(state_dir), timeout)
    if not stopped:
        _say(f"no Kafka node running from {state_dir}")
    return bool(stopped)


def _stop_nodes(state_dir: Path, ids: list[int], timeout: float = 30) -> list[int]:
    """Stop the given nodes together (one by one, the last would wait for a lost quorum to
    acknowledge its controlled shutdown); stale PID files are removed. Returns the ids stopped."""
    targets = {}
    for node_id in ids:
        node = node_dir(state_dir, node_id)
        pid = read_pid(pid_file(node))
        if pid is None:
            continue
        if is_alive(pid) and _is_our_node(pid, node):
            targets[node_id] = pid
        else:
            _say(f"node {node_id}: stale pid file for pid {pid}, removed")
            pid_file(node).unlink(missing_ok=True)
    if not targets:
        return []

    _say("stopping Kafka: " + ", ".join(f"node {i} (pid {pid})" for i, pid in targets.items()))
    started = time.monotonic()
    for pid in targets.values():
        os.kill(pid, signal.SIGTERM)  # Kafka's shutdown hook: controlled shutdown, logs flushed
    while any(map(is_alive, targets.values())) and time.monotonic() - started < timeout:
        time.sleep(0.1)
    for node_id, pid in targets.items():
        if is_alive(pid):
            _say(f"node {node_id} (pid {pid}) still running after {timeout:.0f} s; SIGKILL")
            os.kill(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 10
    while any(map(is_alive, targets.values())) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    for node_id in targets:
        pid_file(node_dir(state_dir, node_id)).unlink(missing_ok=True)
    _say(f"Kafka stopped ({len(targets)} node(s)) in {time.monotonic() - started:.1f} s")
    return list(targets)


def ensure_cluster(
    state_dir: Path,
    port: int | None = None,
    brokers: int | None = None,
    settings: Settings | None = None,
) -> tuple[str, KafkaCluster | None]:
    """A cluster that answers, started here if need be: ``(bootstrap, the cluster started now)``.

    What `up` and the test session (tests/conftest.py) do. The configured cluster when it is not
    the local one: it must answer, nothing is started. Else the local cluster of ``brokers`` nodes
    (default ``KAFKA_BROKERS``) from ``port`` on (default ``KAFKA_PORT``): this state dir's if
    all of it runs, any cluster already answering there, or one started (or completed) now from
    ``state_dir``, the only case that returns a cluster to stop later.
    """
    settings = settings or Settings.from_env()
    if not settings.kafka_is_local:
        external = settings.kafka_bootstrap_servers
        if cluster_answers(external, timeout=10):
            _say(f"KAFKA_BOOTSTRAP_SERVERS={external} answers; using it, started nothing")
            return external, None
        raise BrokerError(
            f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no Kafka cluster answers there; "
            "start it, or unset the variable to run a local cluster"
        )
    port = port or settings.kafka_port
    brokers = settings.kafka_brokers if brokers is None else brokers
    existing = running_cluster(state_dir)
    if existing is not None and existing.port == port and len(existing.nodes) == brokers:
        pids = ", ".join(str(node.pid) for node in existing.nodes)
        _say(f"Kafka already running at {existing.bootstrap} (pid {pids})")
        return existing.bootstrap, None
    if not alive_nodes(state_dir) and _local_answers(port):
        _say(f"a broker started elsewhere answers at {LOOPBACK}:{port}; using it, started nothing")
        return local_kafka_bootstrap(port, brokers), None
    cluster = start_cluster(port, state_dir, brokers, settings=settings)
    return cluster.bootstrap, cluster


# --- command line -------------------------------------------------------------------------------


def _cmd_status(state_dir: Path, port: int, settings: Settings) -> int:
    if not settings.kafka_is_local:
        external = settings.kafka_bootstrap_servers
        answers = cluster_answers(external, timeout=10)
        _say(f"KAFKA_BOOTSTRAP_SERVERS={external}: {'answers' if answers else 'does not answer'}")
        return 0 if answers else 3
    alive = alive_nodes(state_dir)
    if not alive:
        if _local_answers(port, timeout=5):
            _say(f"a broker started elsewhere answers at {LOOPBACK}:{port}; none from {state_dir}")
            return 0
        _say(f"no Kafka node running from {state_dir}, none answers at {LOOPBACK}:{port}")
        return 3
    for node_id in node_ids(state_dir):
        node = alive.get(node_id)
        _say(f"node {node_id}: " + (f"{node.address} (pid {node.pid})" if node else "not running"))
    bootstrap = ",".join(node.address for node in alive.values())
    answers = cluster_answers(bootstrap, timeout=5, brokers=len(node_ids(state_dir)))
    state = "answers" if answers else "does not answer with every node (yet)"
    _say(f"Kafka at {bootstrap} {state}; state in {state_dir}")
    return 0 if answers else 3


def parser(settings: Settings) -> argparse.ArgumentParser:
    """The CLI; its defaults come from the configuration (KAFKA_PORT, KAFKA_BROKERS)."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.kafka_broker",
        description="Start, stop or inspect the local Kafka cluster (KRaft, one or more nodes).",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--port",
        type=int,
        default=settings.kafka_port,
        help=f"the first node's client port on {LOOPBACK}; node i uses port+2(i-1) and its "
        f"controller the port above (default: $KAFKA_PORT or {Settings.kafka_port})",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        default=settings.kafka_brokers,
        help="how many nodes, each a broker and a controller (`up`; default: $KAFKA_BROKERS or "
        f"{Settings.kafka_brokers}); the clients name them all when KAFKA_BROKERS says the same",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"each node's config, data, logs and pid file (default: {DEFAULT_STATE_DIR})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 3 ``status``: not running)."""
    settings = Settings.from_env()
    cli = parser(settings)
    args = cli.parse_args(argv)
    if args.brokers < 1:
        cli.error(f"--brokers must be at least 1, not {args.brokers}")
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            ensure_cluster(state_dir, args.port, args.brokers, settings)
            return 0
        if args.command == "down":
            stop_cluster(state_dir)
            return 0
        return _cmd_status(state_dir, args.port, settings)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
