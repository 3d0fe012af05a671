"""A standalone Spark cluster on this machine: one master and N workers from the pyspark
distribution, so that training runs on `spark://` as it would on a team's cluster.

    python -m infra.spark_cluster up|down|status [--workers 2] [--port 7077] [--state-dir .spark]

Why: `local[*]` runs driver and executors in one JVM; a standalone cluster has executors in JVMs
of their own, fed over the network, which is what a real deployment does and what can break
(a path only the driver sees, a class only the driver has). pip's pyspark ships Spark's launcher
(`bin/spark-class`), so no tarball is needed.

Everything binds to 127.0.0.1 (SPARK_LOCAL_IP): the master at `spark://127.0.0.1:<port>`, its web
UI at `http://127.0.0.1:<ui-port>`, each worker with one core of its own. Then

    SPARK_MASTER=spark://127.0.0.1:7077 make train

State (default `<repo>/.spark`, git-ignored): the properties file every daemon is started with
(its path in their command lines is how `down` recognises them), logs, PID files and the
workers' scratch directories.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra.errors import BrokerError
from infra.java import find_java
from infra.ports import LOOPBACK, accepts_tcp, port_in_use
from infra.processes import cmdline, is_alive, read_pid, tail_file
from pipelines.config import PROJECT_ROOT, Settings

DEFAULT_STATE_DIR = PROJECT_ROOT / ".spark"
DEFAULT_PORT = 7077
DEFAULT_WORKERS = 2
WORKER_MEMORY = "2g"  # per worker; executors take what they ask for out of it
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"


@dataclass(frozen=True)
class Cluster:
    """A master and its workers, started from `state_dir`."""

    url: str  # spark://127.0.0.1:<port>
    ui: str
    pids: dict[str, int]  # "master", "worker-1", ...
    state_dir: Path


def spark_home() -> Path:
    """The pyspark package: it holds bin/spark-class and the jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _say(message: str) -> None:
    print(message, flush=True)


def _properties(state_dir: Path) -> Path:
    return state_dir / "spark-daemons.conf"


def _pid_file(state_dir: Path, daemon: str) -> Path:
    return state_dir / "pids" / f"{daemon}.pid"


def _is_ours(pid: int, state_dir: Path) -> bool:
    """Guard against PID reuse: a Spark daemon started with this state dir's properties file."""
    args = cmdline(pid)
    return str(_properties(state_dir)) in args and (MASTER_CLASS in args or WORKER_CLASS in args)


def running_daemons(state_dir: Path) -> dict[str, int]:
    """The daemons of `state_dir` that are alive, by name."""
    alive = {}
    for pid_path in sorted((state_dir / "pids").glob("*.pid")):
        pid = read_pid(pid_path)
        if pid is not None and is_alive(pid) and _is_ours(pid, state_dir):
            alive[pid_path.stem] = pid
    return alive


def alive_workers(ui: str) -> int:
    """How many workers the master counts as alive (its web UI's JSON), 0 if it does not answer."""
    try:
        with urllib.request.urlopen(f"{ui}/json/", timeout=2) as answer:
            return int(json.load(answer).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


def start_cluster(
    state_dir: Path,
    port: int = DEFAULT_PORT,
    ui_port: int = 8080,
    workers: int = DEFAULT_WORKERS,
    timeout: float = 120,
    settings: Settings | None = None,
) -> Cluster:
    """Start a master on 127.0.0.1:`port` and `workers` workers of one core each; return once
    every worker has registered. On failure everything started is stopped and the error carries
    the tail of the log that says why."""
    state_dir = state_dir.resolve()
    if running_daemons(state_dir):
        raise BrokerError(f"a Spark cluster from {state_dir} is already running; stop it first")
    for needed in (port, ui_port):
        if port_in_use(needed):
            raise BrokerError(
                f"port {needed} on {LOOPBACK} is already in use; the cluster needs {port} (master) "
                f"and {ui_port} (its web UI). Choose others with --port / --ui-port"
            )
    java = find_java(settings)
    for folder in ("logs", "pids", "work"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    _properties(state_dir).write_text("spark.worker.cleanup.enabled true\n")
    url, ui = f"spark://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{ui_port}"

    started = time.monotonic()
    _say(f"starting Spark master at {url} (web UI {ui}) and {workers} worker(s) ...")
    _launch(
        state_dir,
        java,
        "master",
        MASTER_CLASS,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--webui-port",
        str(ui_port),
    )
    try:
        _wait(lambda: accepts_tcp(LOOPBACK, port), state_dir, "master", started + timeout)
        for i in range(1, workers + 1):
            work_dir = state_dir / "work" / f"worker-{i}"
            _launch(
                state_dir,
                java,
                f"worker-{i}",
                WORKER_CLASS,
                "--host",
                LOOPBACK,
                "--cores",
                "1",
                "--memory",
                WORKER_MEMORY,
                "--webui-port",
                "0",
                "--work-dir",
                str(work_dir),
                url,
            )
        _wait(lambda: alive_workers(ui) >= workers, state_dir, "worker-1", started + timeout)
    except BrokerError:
        stop_cluster(state_dir)
        raise
    _say(
        f"Spark cluster up at {url} in {time.monotonic() - started:.1f} s; logs in {state_dir}/logs"
    )
    return Cluster(url, ui, running_daemons(state_dir), state_dir)


def _launch(state_dir: Path, java: str, name: str, main_class: str, *args: str) -> None:
    environment = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "JAVA_HOME": str(Path(java).resolve().parent.parent),
        "SPARK_LOCAL_IP": LOOPBACK,  # the daemons and their web UIs bind to loopback
        "SPARK_LOG_DIR": str(state_dir / "logs"),
    }
    command = [
        str(spark_home() / "bin" / "spark-class"),
        main_class,
        *args,
        "--properties-file",
        str(_properties(state_dir)),
    ]
    with open(state_dir / "logs" / f"{name}.out", "ab") as out:
        process = subprocess.Popen(
            command,
            env=environment,
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal does not reach the daemons
        )
    # spark-class ends by exec-ing java: the PID is the daemon's JVM.
    _pid_file(state_dir, name).write_text(f"{process.pid}\n")


def _wait(ready, state_dir: Path, daemon: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if ready():
            return
        pid = read_pid(_pid_file(state_dir, daemon))
        if pid is None or not is_alive(pid):
            raise BrokerError(
                f"the Spark {daemon} exited while starting\n"
                + tail_file(state_dir / "logs" / f"{daemon}.out", 20)
            )
        time.sleep(0.5)
    raise BrokerError(
        f"the Spark cluster was not ready in time ({daemon})\n"
        + tail_file(state_dir / "logs" / f"{daemon}.out", 20)
    )


def stop_cluster(state_dir: Path, timeout: float = 30) -> bool:
    """SIGTERM the daemons started from `state_dir` (workers first), SIGKILL after `timeout` s.
    Only PIDs that still run this state dir's daemons are signalled."""
    state_dir = state_dir.resolve()
    daemons = running_daemons(state_dir)
    for pid_path in (state_dir / "pids").glob("*.pid"):
        pid_path.unlink()
    if not daemons:
        _say(f"no Spark cluster running from {state_dir}")
        return False
    order = sorted(daemons, key=lambda name: name == "master")  # the master last
    for name in order:
        os.kill(daemons[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_alive(pid) for pid in daemons.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name, pid in daemons.items():
        if is_alive(pid):
            _say(f"{name} (pid {pid}) still running after {timeout:.0f} s; sending SIGKILL")
            os.kill(pid, signal.SIGKILL)
    _say(f"Spark cluster stopped ({', '.join(f'{n} pid {p}' for n, p in daemons.items())})")
    return True


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 3 `status`: not running)."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.spark_cluster",
        description="Start, stop or inspect a standalone Spark cluster on 127.0.0.1.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="one core each")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the master's port")
    parser.add_argument("--ui-port", type=int, default=8080, help="the master's web UI")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            start_cluster(state_dir, args.port, args.ui_port, args.workers)
            return 0
        if args.command == "down":
            stop_cluster(state_dir)
            return 0
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    daemons = running_daemons(state_dir)
    if not daemons:
        _say(f"no Spark cluster running from {state_dir}")
        return 3
    _say(f"running from {state_dir}: {', '.join(f'{n} (pid {p})' for n, p in daemons.items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
