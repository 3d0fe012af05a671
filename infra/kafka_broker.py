"""A real single-node Apache Kafka broker (KRaft mode) for development and tests.

Why: the pipeline and its integration tests talk to a real broker, and a laptop should not need
Docker or a hand-unpacked tarball for that. Kafka's jars come from Maven Central through
``infra/kafka/pom.xml`` (``mvn dependency:copy-dependencies`` into ``infra/kafka/lib``), or from an
unpacked Kafka distribution when ``KAFKA_HOME`` is set, and the broker runs as a detached JVM that
outlives this command.

    python -m infra.kafka_broker up|down|status [--port 9092] [--state-dir .kafka]

Ports: clients use ``127.0.0.1:<port>``; the broker's own KRaft controller listens on
``127.0.0.1:<port + 1>``. Both bind to loopback only.

State dir (default ``<repo>/.kafka``, git-ignored)::

    server.properties   generated on every start
    broker.pid          the JVM's PID while it runs
    data/               KRaft metadata and topic data (formatted once; survives restarts)
    logs/server.log     the broker's log (log4j2, config in infra/kafka/log4j2.yaml)
    logs/broker.out     the JVM's stdout/stderr (start-up failures land here)

Environment: ``KAFKA_PORT`` (default port), ``KAFKA_BOOTSTRAP_SERVERS`` (an existing cluster: ``up``
starts nothing), ``KAFKA_HOME`` (use ``$KAFKA_HOME/libs``, never Maven), ``JAVA_HOME`` (which Java),
``KAFKA_HEAP_OPTS`` (JVM heap flags, default ``-Xmx1g -Xms256m``).
"""

from __future__ import annotations

import argparse
import base64
import errno
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = REPO_ROOT / "infra" / "kafka"
POM = KAFKA_DIR / "pom.xml"
LIB_DIR = KAFKA_DIR / "lib"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.yaml"
DEFAULT_STATE_DIR = REPO_ROOT / ".kafka"
DEFAULT_PORT = 9092
MIN_JAVA = 17
DEFAULT_HEAP_OPTS = "-Xmx1g -Xms256m"
# Written into LIB_DIR after a successful fetch: the pom's digest, so editing the pom refetches.
FETCH_STAMP = ".pom.sha256"


class BrokerError(RuntimeError):
    """A failure the user can act on; the CLI prints its message without a traceback."""


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


# --- the Kafka runtime (jars) and Java ----------------------------------------------------------


def kafka_version() -> str:
    """The Kafka version pinned in the pom (``<kafka.version>``), for messages."""
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(POM).getroot().find("m:properties/m:kafka.version", ns)
    return node.text.strip() if node is not None and node.text else "?"


def _has_kafka_jar(directory: Path) -> bool:
    return any(directory.glob("kafka_2.13-*.jar"))


def fetch_runtime() -> Path:
    """Return the directory whose jars are the broker's classpath, fetching it if needed.

    With ``KAFKA_HOME`` set, that distribution's ``libs`` is used and Maven is never run. Otherwise
    ``infra/kafka/lib`` is (re)filled by Maven when it lacks the jars or the pom changed since.
    """
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home) / "libs"
        if not _has_kafka_jar(libs):
            raise BrokerError(
                f"KAFKA_HOME={kafka_home} has no {libs}/kafka_2.13-*.jar; point KAFKA_HOME at an "
                "unpacked Apache Kafka distribution, or unset it to fetch Kafka through Maven"
            )
        return libs

    pom_digest = hashlib.sha256(POM.read_bytes()).hexdigest()
    stamp = LIB_DIR / FETCH_STAMP
    if _has_kafka_jar(LIB_DIR) and stamp.is_file() and stamp.read_text().strip() == pom_digest:
        return LIB_DIR

    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) is not on PATH: install Maven 3.8+ to fetch Kafka, or set KAFKA_HOME "
            "to an unpacked Apache Kafka 4.x distribution"
        )
    _say(f"fetching Kafka {kafka_version()} through Maven into {LIB_DIR} ...")
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    for old_jar in LIB_DIR.glob("*.jar"):  # jars of an older pom must not linger on the classpath
        old_jar.unlink()
    command = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={LIB_DIR}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not _has_kafka_jar(LIB_DIR):
        output = _tail_text(result.stdout + result.stderr, 30)
        raise BrokerError(f"Maven could not fetch Kafka (exit {result.returncode}):\n{output}")
    stamp.write_text(pom_digest + "\n")
    return LIB_DIR


def find_java() -> str:
    """Return the java executable (``$JAVA_HOME/bin/java`` or PATH), checking it is Java 17+."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if java is None or not Path(java).is_file():
        raise BrokerError(
            f"Java {MIN_JAVA}+ is required to run Kafka but no java was found "
            f"({'JAVA_HOME=' + java_home if java_home else 'not on PATH'}); install OpenJDK 17+"
        )
    result = subprocess.run([java, "-version"], capture_output=True, text=True)
    # `java -version` prints e.g. 'openjdk version "17.0.15" 2025-04-15' (or "1.8.0_392") to stderr.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match is None:
        raise BrokerError(f"could not tell the version of {java}: {result.stderr.strip()!r}")
    major = int(match.group(1))
    if major == 1:  # the pre-9 scheme: 1.8 is Java 8
        major = int(match.group(2) or 0)
    if major < MIN_JAVA:
        raise BrokerError(f"Kafka 4 needs Java {MIN_JAVA}+, but {java} is Java {major}")
    return java


# --- state dir: config, storage, pid ------------------------------------------------------------


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "broker.pid"


def _properties_file(state_dir: Path) -> Path:
    return state_dir / "server.properties"


def write_server_properties(state_dir: Path, port: int) -> Path:
    """Write a single-node KRaft config (broker and controller in one JVM) for a laptop."""
    controller_port = port + 1
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(state_dir / "data"),
        "num.partitions": "3",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        # One broker: every internal topic can only have one replica.
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Consumer groups form at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        "log.retention.hours": "168",
    }
    path = _properties_file(state_dir)
    lines = ["# Generated by infra/kafka_broker.py on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_port(state_dir: Path) -> int | None:
    """The client port in the state dir's generated server.properties, if any."""
    try:
        text = _properties_file(state_dir).read_text()
    except FileNotFoundError:
        return None
    match = re.search(r"^advertised\.listeners=PLAINTEXT://[^:]+:(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _random_cluster_id() -> str:
    """A Kafka cluster id as ``StorageTool random-uuid`` makes it (without starting a JVM)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):  # Kafka refuses ids that look like a CLI flag
            return cluster_id


def _java_command(java: str, classpath: Path, state_dir: Path, *main_and_args: str) -> list[str]:
    heap = os.environ.get("KAFKA_HEAP_OPTS", DEFAULT_HEAP_OPTS).split()
    return [
        java,
        *heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={state_dir / 'logs'}",
        "-cp",
        f"{classpath}{os.sep}*",
        *main_and_args,
    ]


def _format_storage(java: str, classpath: Path, state_dir: Path, properties: Path) -> None:
    """Format the KRaft storage once; ``data/meta.properties`` marks a formatted dir."""
    if (state_dir / "data" / "meta.properties").exists():
        return
    _say(f"formatting KRaft storage in {state_dir / 'data'} ...")
    command = _java_command(
        java,
        classpath,
        state_dir,
        "kafka.tools.StorageTool",
        "format",
        "-t",
        _random_cluster_id(),
        "-c",
        str(properties),
    )
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = _tail_text(result.stdout + result.stderr, 30)
        raise BrokerError(f"formatting Kafka storage failed (exit {result.returncode}):\n{output}")


# --- processes and ports ------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it does not exist (``/proc``; ``ps`` where there is none)."""
    if Path("/proc/self").exists():
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return []
        return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    ps = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return ps.stdout.split()


def _is_alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it first if it is our exited child (no zombie)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child (the usual case: started by an earlier `up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_broker(pid: int, state_dir: Path) -> bool:
    """Guard against PID reuse: the process must be kafka.Kafka run on this state dir's config."""
    args = _cmdline(pid)
    return "kafka.Kafka" in args and str(_properties_file(state_dir)) in args


def _read_pid(state_dir: Path) -> int | None:
    try:
        return int(_pid_file(state_dir).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def running_broker(state_dir: Path) -> Broker | None:
    """The broker started from ``state_dir`` if its JVM is alive, else None."""
    state_dir = state_dir.resolve()
    pid = _read_pid(state_dir)
    if pid is None or not _is_alive(pid) or not _is_our_broker(pid, state_dir):
        return None
    return Broker(pid=pid, bootstrap=f"127.0.0.1:{_read_port(state_dir)}", state_dir=state_dir)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener already holds ``host:port`` (SO_REUSEADDR, as the JVM binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (for tests and benchmarks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_pair() -> int:
    """A free port P with P+1 free too: room for a private broker and its controller (tests)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not port_in_use(port + 1):
            return port
    raise BrokerError("found no two consecutive free ports on 127.0.0.1")


def _accepts_tcp(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


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


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _log_tail(state_dir: Path, lines: int = 40) -> str:
    """The end of the JVM output and of the broker log, for error messages."""
    parts = []
    for name in ("broker.out", "server.log"):
        path = state_dir / "logs" / name
        if path.is_file() and path.stat().st_size:
            tail = _tail_text(path.read_text(errors="replace"), lines)
            parts.append(f"--- last lines of {path} ---\n{tail}")
    return "\n".join(parts) or f"(no output in {state_dir / 'logs'})"


# --- start and stop -----------------------------------------------------------------------------


def start_broker(port: int, state_dir: Path, timeout: float = 60) -> Broker:
    """Start a broker on ``127.0.0.1:port`` (controller on ``port + 1``) from ``state_dir``.

    Returns once the broker answers a Kafka request. Idempotent: if this state dir's broker already
    runs on ``port``, it is returned as is. On failure the JVM is stopped and the error carries the
    tail of its log.
    """
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
                f"port {needed} on 127.0.0.1 is already in use by another process; the broker "
                f"needs {port} (clients) and {port + 1} (its controller). Free it, or choose "
                "another port with --port / KAFKA_PORT"
            )

    java = find_java()
    classpath = fetch_runtime()
    (state_dir / "data").mkdir(parents=True, exist_ok=True)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    properties = write_server_properties(state_dir, port)
    _format_storage(java, classpath, state_dir, properties)

    _say(f"starting Kafka broker on 127.0.0.1:{port} (controller on {port + 1}) ...")
    started = time.monotonic()
    command = _java_command(java, classpath, state_dir, "kafka.Kafka", str(properties))
    with open(state_dir / "logs" / "broker.out", "ab") as out:
        process = subprocess.Popen(
            command,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: Ctrl-C in this terminal does not reach it
        )
    _pid_file(state_dir).write_text(f"{process.pid}\n")
    broker = Broker(pid=process.pid, bootstrap=f"127.0.0.1:{port}", state_dir=state_dir)

    deadline = started + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _pid_file(state_dir).unlink(missing_ok=True)
            raise BrokerError(
                f"the Kafka JVM exited with code {process.returncode} while starting\n"
                + _log_tail(state_dir)
            )
        remaining = deadline - time.monotonic()
        if _accepts_tcp("127.0.0.1", port) and cluster_answers(broker.bootstrap, min(5, remaining)):
            _say(
                f"broker up at {broker.bootstrap} (pid {broker.pid}) "
                f"in {time.monotonic() - started:.1f} s; log: {state_dir / 'logs' / 'server.log'}"
            )
            return broker
        time.sleep(0.25)

    stop_broker(state_dir)
    raise BrokerError(
        f"the broker did not answer at {broker.bootstrap} within {timeout:.0f} s\n"
        + _log_tail(state_dir)
    )


def stop_broker(state_dir: Path, timeout: float = 30) -> bool:
    """Stop the broker started from ``state_dir``: SIGTERM its PID, SIGKILL after ``timeout`` s.

    Only that exact PID is signalled, and only if it still is this state dir's kafka.Kafka JVM.
    Returns whether a broker was stopped; not running is a no-op with a message.
    """
    state_dir = state_dir.resolve()
    pid_file = _pid_file(state_dir)
    pid = _read_pid(state_dir)
    if pid is None:
        _say(f"no broker running from {state_dir} (no pid file)")
        return False
    if not _is_alive(pid) or not _is_our_broker(pid, state_dir):
        _say(f"no broker running from {state_dir} (stale pid file for pid {pid}, removed)")
        pid_file.unlink(missing_ok=True)
        return False

    _say(f"stopping broker (pid {pid}) ...")
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)  # Kafka's shutdown hook: controlled shutdown, logs flushed
    while _is_alive(pid) and time.monotonic() - started < timeout:
        time.sleep(0.1)
    if _is_alive(pid):
        _say(f"broker (pid {pid}) still running after {timeout:.0f} s; sending SIGKILL")
        os.kill(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 10
        while _is_alive(pid) and time.monotonic() < kill_deadline:
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)
    _say(f"broker stopped (pid {pid}) in {time.monotonic() - started:.1f} s")
    return True


# --- command line -------------------------------------------------------------------------------


def _cmd_up(port: int, state_dir: Path) -> int:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        if cluster_answers(external, timeout=10):
            _say(f"KAFKA_BOOTSTRAP_SERVERS={external} answers; using it, started nothing")
            return 0
        raise BrokerError(
            f"KAFKA_BOOTSTRAP_SERVERS={external} is set but no Kafka cluster answers there; "
            "start it, or unset the variable to run a local broker"
        )
    existing = running_broker(state_dir)
    if existing is not None:
        _say(f"broker already running at {existing.bootstrap} (pid {existing.pid})")
        return 0
    start_broker(port, state_dir)
    return 0


def _cmd_status(state_dir: Path) -> int:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if external:
        answers = cluster_answers(external, timeout=10)
        _say(f"KAFKA_BOOTSTRAP_SERVERS={external}: {'answers' if answers else 'does not answer'}")
        return 0 if answers else 3
    broker = running_broker(state_dir)
    if broker is None:
        _say(f"no broker running from {state_dir}")
        return 3
    answers = cluster_answers(broker.bootstrap, timeout=5)
    state = "answers" if answers else "does not answer (yet)"
    _say(f"broker running at {broker.bootstrap} (pid {broker.pid}), {state}; state in {state_dir}")
    return 0 if answers else 3


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 3 ``status``: not running)."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.kafka_broker",
        description="Start, stop or inspect the local single-node Kafka broker (KRaft).",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("KAFKA_PORT") or DEFAULT_PORT),
        help="client port on 127.0.0.1; the controller uses port+1 (default: $KAFKA_PORT or 9092)",
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
            return _cmd_up(args.port, state_dir)
        if args.command == "down":
            stop_broker(state_dir)
            return 0
        return _cmd_status(state_dir)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
