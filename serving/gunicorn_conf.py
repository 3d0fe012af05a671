"""Gunicorn configuration, read from the SERVING_* environment (see serving.settings).

`python -m serving` loads it; it also works on its own:
`gunicorn -c python:serving.gunicorn_conf 'serving.app:create_app()'`.

- `gthread` workers keep HTTP connections alive (the sync worker closes every one), and a worker's
  threads let slow clients not block each other. Use about one worker per core.
- Each worker listens on a socket of its own (SO_REUSEPORT) and the kernel spreads new connections
  evenly over them. With one shared socket, whichever worker was awake took the connections: a
  client's 8 keep-alive connections often all landed on one worker, on one core, at half the
  throughput. Since a second server could then quietly share the port, a taken port is refused
  at start (on_starting).
- Each worker loads the models and runs its own registry poller: after an alias moves, workers
  switch within one poll interval of each other. `POST /admin/reload` reaches them all at once
  through a directory they share (serving.reload), made here and removed on exit.
- pyspark stays out of the master and so of the workers (see serving.keep_pyspark_out).
- Metrics: every worker writes its counters to PROMETHEUS_MULTIPROC_DIR (a fresh temporary
  directory unless set), and `/metrics` on any worker reports the sum over all of them.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

from serving import keep_pyspark_out
from serving.reload import ReloadBoard
from serving.settings import ServingSettings

keep_pyspark_out()


def _multiprocess_dir() -> tuple[Path, bool]:
    """The metrics directory, emptied as prometheus_client requires; True if we made it."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
    # Must be set before prometheus_client is first imported, in this process and the workers.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path, True


_metrics_dir, _own_metrics_dir = _multiprocess_dir()
# Read by ServingSettings in every worker.
os.environ["SERVING_RELOAD_DIR"] = _reload_dir = tempfile.mkdtemp(prefix="serving-reload-")
_reload_board = ReloadBoard(Path(_reload_dir))
_settings = ServingSettings.from_env()

bind = f"{_settings.host}:{_settings.port}"
workers = _settings.workers
threads = _settings.threads
worker_class = "gthread"
reuse_port = True
control_socket_disable = True  # gunicornc is not used; do not write ~/.gunicorn/gunicorn.ctl
keepalive = 5
timeout = 30
graceful_timeout = 10
# serving.app writes one access line per request (with its latency) to its own log.
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "customer-segmentation-serving"


def on_starting(server) -> None:
    try:
        _refuse_a_taken_port(_settings.host, _settings.port)
    except SystemExit:
        on_exit(server)  # on_exit is not called when start fails: remove our directories
        raise


def _refuse_a_taken_port(host: str, port: int) -> None:
    """Bind once without SO_REUSEPORT: it fails if anything, even another server, listens."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as error:
        raise SystemExit(
            f"cannot listen on {host}:{port}: {error.strerror}. Stop what holds the port, or "
            "choose another with --port / SERVING_PORT"
        ) from None


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    _reload_board.forget(worker.pid)


def on_exit(server) -> None:
    shutil.rmtree(_reload_dir, ignore_errors=True)
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
