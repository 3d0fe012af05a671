"""An MLflow tracking server on PostgreSQL, as a team runs it: runs and registry in a real
database, artifacts uploaded and downloaded through the server (`--serve-artifacts`).

    python -m infra.mlflow_server up|down|status [--port 5005] [--db-port 5433]
                                                  [--workers 2] [--state-dir .mlflow-server]

Then every part of the project talks to it over HTTP:

    export MLFLOW_TRACKING_URI=http://127.0.0.1:5005

The server listens on 127.0.0.1:`port` (its web UI too); its database is a PostgreSQL cluster of
its own (infra/postgres.py) on 127.0.0.1:`db-port`. State (default `<repo>/.mlflow-server`,
git-ignored): `postgres/` (the cluster, kept across restarts), `artifacts/` (what the server
stores for its clients), `mlflow-server.pid` and `logs/mlflow-server.log`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from infra import postgres
from infra.errors import BrokerError
from infra.ports import LOOPBACK, port_in_use
from infra.processes import cmdline, is_alive, read_pid, tail_file
from pipelines.config import PROJECT_ROOT

DEFAULT_STATE_DIR = PROJECT_ROOT / ".mlflow-server"
DEFAULT_PORT = 5005
DEFAULT_DB_PORT = 5433
# The server's worker processes; each imports MLflow (~250 MB): two for a development machine.
DEFAULT_WORKERS = 2
# A first start also creates MLflow's schema (some seventy migrations); seen taking 165 s on two
# cores busy with other jobs.
START_TIMEOUT = 300.0
# MLflow 3's server also starts a job runner with seven huey consumer processes (~500 MB) for its
# GenAI jobs (scorers, trace archival), which the project has none of. A user's setting wins.
NO_JOB_RUNNER = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass(frozen=True)
class TrackingServer:
    """A server started from `state_dir`: its URL (MLFLOW_TRACKING_URI) and its database's."""

    url: str
    database_url: str
    pid: int
    state_dir: Path


def _say(message: str) -> None:
    print(message, flush=True)


def database_cluster(state_dir: Path) -> postgres.Cluster:
    """The PostgreSQL cluster of the server started from `state_dir` (its data, log, pgpass)."""
    return postgres.Cluster(state_dir / "postgres")


def _artifacts(state_dir: Path) -> Path:
    return state_dir / "artifacts"


def _pid_file(state_dir: Path) -> Path:
    return state_dir / "mlflow-server.pid"


def _log(state_dir: Path) -> Path:
    return state_dir / "logs" / "mlflow-server.log"


def _is_ours(pid: int, state_dir: Path) -> bool:
    """Guard against PID reuse: an `mlflow server` storing artifacts in this state dir."""
    args = cmdline(pid)
    return "server" in args and str(_artifacts(state_dir)) in args


def running_server(state_dir: Path) -> int | None:
    """The PID of the tracking server started from `state_dir`, if it is alive."""
    pid = read_pid(_pid_file(state_dir))
    return pid if pid is not None and is_alive(pid) and _is_ours(pid, state_dir) else None


def _url(pid: int) -> str:
    """The URL of the running server `pid`, from the --port of its command line."""
    args = cmdline(pid)
    return f"http://{LOOPBACK}:{args[args.index('--port') + 1]}"


def healthy(url: str) -> bool:
    """Whether the server at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def start_server(
    state_dir: Path,
    port: int = DEFAULT_PORT,
    db_port: int = DEFAULT_DB_PORT,
    workers: int = DEFAULT_WORKERS,
    timeout: float = START_TIMEOUT,
) -> TrackingServer:
    """Start PostgreSQL (initialised on first use) and the tracking server in front of it; return
    once the server answers. What is already running from `state_dir` is kept."""
    state_dir = state_dir.resolve()
    cluster = database_cluster(state_dir)
    pid = running_server(state_dir)
    running_port = postgres.port(cluster) if postgres.running(cluster) else None
    if pid is not None and running_port is not None:
        url = _url(pid)
        _say(f"MLflow tracking server already running at {url} (pid {pid})")
        return TrackingServer(url, cluster.url(running_port), pid, state_dir)
    url = _url(pid) if pid is not None else f"http://{LOOPBACK}:{port}"
    if pid is None and port_in_use(port):
        raise BrokerError(
            f"port {port} on {LOOPBACK} is already in use; the tracking server needs it. Choose "
            f"another with --port"
        )
    started = time.monotonic()
    if running_port is None:
        _say(f"starting PostgreSQL on {LOOPBACK}:{db_port} (data in {cluster.data}) ...")
        postgres.start(cluster, db_port)
        running_port = db_port
    if pid is None:
        _say(f"starting the MLflow tracking server at {url} ...")
        pid = _launch(state_dir, cluster, port, running_port, workers)
    deadline = started + timeout
    while not healthy(url):
        if not is_alive(pid):
            raise BrokerError(
                "the MLflow tracking server exited while starting\n"
                + tail_file(_log(state_dir), 30)
            )
        if time.monotonic() > deadline:
            stop_server(state_dir)
            raise BrokerError(
                f"the MLflow tracking server did not answer at {url} within {timeout:.0f} s\n"
                + tail_file(_log(state_dir), 30)
            )
        time.sleep(0.5)
    _say(
        f"MLflow tracking server up at {url} in {time.monotonic() - started:.1f} s "
        f"(PostgreSQL {cluster.url(running_port)}); export MLFLOW_TRACKING_URI={url}"
    )
    return TrackingServer(url, cluster.url(running_port), pid, state_dir)


def _launch(
    state_dir: Path, cluster: postgres.Cluster, port: int, db_port: int, workers: int
) -> int:
    _artifacts(state_dir).mkdir(parents=True, exist_ok=True)
    _log(state_dir).parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        cluster.url(db_port),
        "--serve-artifacts",
        "--artifacts-destination",
        str(_artifacts(state_dir)),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    with open(_log(state_dir), "ab") as out:
        process = subprocess.Popen(
            command,
            env=NO_JOB_RUNNER | os.environ | cluster.client_env(),
            cwd=state_dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # Its own process group: it starts uvicorn and its workers, stopped with it as one.
            start_new_session=True,
        )
    _pid_file(state_dir).write_text(f"{process.pid}\n")
    return process.pid


def stop_server(state_dir: Path, timeout: float = 30) -> bool:
    """SIGTERM the tracking server's process group (SIGKILL after `timeout` s), then stop
    PostgreSQL. False when neither was running."""
    state_dir = state_dir.resolve()
    pid = running_server(state_dir)
    _pid_file(state_dir).unlink(missing_ok=True)
    if pid is not None:
        os.killpg(pid, signal.SIGTERM)  # the group it leads: start_new_session
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if is_alive(pid):
            _say(f"the tracking server (pid {pid}) still runs after {timeout:.0f} s; SIGKILL")
        with contextlib.suppress(ProcessLookupError):  # what is left of its group: a worker
            os.killpg(pid, signal.SIGKILL)
        _say(f"MLflow tracking server stopped (pid {pid})")
    database = postgres.stop(database_cluster(state_dir))
    if database:
        _say("PostgreSQL stopped")
    if pid is None and not database:
        _say(f"no MLflow tracking server running from {state_dir}")
    return pid is not None or database


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 error, 3 `status`: not running)."""
    parser = argparse.ArgumentParser(
        prog="python -m infra.mlflow_server",
        description="Start, stop or inspect an MLflow tracking server on PostgreSQL, 127.0.0.1.",
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the tracking server's")
    parser.add_argument("--db-port", type=int, default=DEFAULT_DB_PORT, help="PostgreSQL's")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    state_dir = args.state_dir.resolve()
    try:
        if args.command == "up":
            start_server(state_dir, args.port, args.db_port, args.workers)
            return 0
        if args.command == "down":
            stop_server(state_dir)
            return 0
        return _status(state_dir)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1


def _status(state_dir: Path) -> int:
    pid = running_server(state_dir)
    cluster = database_cluster(state_dir)
    db_port = postgres.port(cluster) if postgres.running(cluster) else None
    server = "not running"
    if pid is not None:
        url = _url(pid)
        server = f"pid {pid} at {url}, {'answering' if healthy(url) else 'not answering'}"
    database = cluster.url(db_port) if db_port is not None else "not running"
    _say(f"tracking server: {server}; PostgreSQL: {database} (state in {state_dir})")
    return 0 if pid is not None and db_port is not None else 3


if __name__ == "__main__":
    sys.exit(main())
