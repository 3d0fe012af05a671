"""The server process: granian in front, `workers` processes each serving the Flask app through
serving.gateway. `python -m serving` calls `run()`.

Before anything listens:
- an address other than loopback without SERVING_ADMIN_TOKEN is refused: `/admin/*` would then be
  open to the network (serving.ops);
- a taken port is refused. Each worker listens on a socket of its own (SO_REUSEPORT, so the kernel
  spreads connections over the workers), which would also let a second server quietly share the
  port: so the port is bound once without SO_REUSEPORT first.

The workers share two directories made here and removed on exit: PROMETHEUS_MULTIPROC_DIR, where
each writes its counters and from which `/metrics` on any worker sums them (serving.metrics), and
SERVING_RELOAD_DIR, through which `POST /admin/reload` reaches every worker (serving.reload).

granian replaces a worker that dies (a crash, a SIGKILL) within a moment; the requests it was
answering are lost, and new connections go to the other workers meanwhile. SIGTERM or SIGINT stops
accepting, lets requests in progress finish (`graceful_timeout` at most) and exits.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serving import keep_pyspark_out
from serving.logging_setup import FORMAT
from serving.settings import ServingSettings, is_loopback

log = logging.getLogger("serving.server")

ADMIN_TOKEN_HOWTO = (
    "set SERVING_ADMIN_TOKEN to a long random secret, for instance "
    '`export SERVING_ADMIN_TOKEN="$(openssl rand -hex 32)"`; clients then send '
    "`Authorization: Bearer <token>` to /admin/*"
)


def run(settings: ServingSettings) -> None:
    refuse_open_admin(settings)
    refuse_taken_port(settings.host, settings.port)
    _raise_open_files_limit()
    keep_pyspark_out()
    with _shared_directories():
        # Import the app and MLflow's store modules once here, so forked workers start with them
        # loaded (about a second each, otherwise). Importing opens no connection. After the
        # directories: prometheus_client reads PROMETHEUS_MULTIPROC_DIR when first imported.
        import mlflow.store.model_registry.rest_store
        import mlflow.store.model_registry.sqlalchemy_store
        import mlflow.store.tracking.rest_store
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        import serving.app  # noqa: F401

        granian(settings).serve()


def granian(settings: ServingSettings) -> Any:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    return Granian(
        "serving.gateway:create",
        factory=True,
        interface=Interfaces.RSGI,
        loop=event_loop(),
        address=settings.host,
        port=settings.port,
        workers=settings.workers,
        # HTTP/1.1 only: with protocol detection ("auto"), a connection that sends nothing at all
        # is held until the client closes it; HTTP/1's header timer starts at accept.
        http=HTTPModes.http1,
        websockets=False,
        backlog=settings.backlog,
        backpressure=settings.max_connections,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(settings.header_timeout * 1000)), keep_alive=True
        ),
        respawn_failed_workers=True,
        workers_kill_timeout=max(1, math.ceil(settings.graceful_timeout)),
        log_level=settings.log_level.lower(),
        log_dictconfig=_granian_logging(settings),
    )


def event_loop() -> Any:
    """uvloop, a dependency: every request passes through the worker's event loop, and uvloop's
    costs about a fifth less CPU per request than asyncio's (bench/serve.py). An environment
    installed before uvloop was added gets asyncio's loop and a warning."""
    from granian.constants import Loops

    if importlib.util.find_spec("uvloop") is not None:
        return Loops.uvloop
    log.warning(
        "uvloop is not installed (pip install -e .): the workers run asyncio's event loop, "
        "which costs more CPU per request"
    )
    return Loops.asyncio


def refuse_open_admin(settings: ServingSettings) -> None:
    """Without an admin token, listen on loopback addresses only."""
    if settings.admin_token is not None:
        return
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(settings.host, settings.port)}
    except socket.gaierror as error:
        raise SystemExit(f"cannot resolve --host {settings.host}: {error.strerror}") from None
    if not all(is_loopback(address) for address in addresses):
        raise SystemExit(
            f"refusing to listen on {settings.host}:{settings.port} without an admin token: "
            "POST /admin/reload would answer anyone who can reach it. To listen there, "
            f"{ADMIN_TOKEN_HOWTO}. Or listen on 127.0.0.1 (the default)."
        )


def refuse_taken_port(host: str, port: int) -> None:
    """Bind once without SO_REUSEPORT: it fails if anything, even another server, listens."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as error:
        raise SystemExit(
            f"cannot listen on {host}:{port}: {error.strerror}. Stop what holds the port, or "
            "choose another with --port / SERVING_PORT"
        ) from None


def _raise_open_files_limit() -> None:
    """One descriptor per connection: allow as many as the hard limit does (workers inherit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def _shared_directories() -> Iterator[None]:
    made = []
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        metrics_dir = Path(configured)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        for stale in metrics_dir.glob("*.db"):  # prometheus_client requires an empty directory
            stale.unlink()
    else:
        metrics_dir = Path(tempfile.mkdtemp(prefix="serving-metrics-"))
        made.append(metrics_dir)
    reload_dir = Path(tempfile.mkdtemp(prefix="serving-reload-"))
    made.append(reload_dir)
    # Read by prometheus_client and ServingSettings in every worker.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["SERVING_RELOAD_DIR"] = str(reload_dir)
    try:
        yield
    finally:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def _granian_logging(settings: ServingSettings) -> dict[str, Any]:
    """granian's own messages (workers started, died, respawned) beside the app's: on stderr and
    in the rotating log file, in the same format."""
    handlers: dict[str, Any] = {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "serving",
            "stream": "ext://sys.stderr",
        }
    }
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers["file"] = {
            "()": "serving.logging_setup.SharedRotatingFileHandler",
            "filename": settings.log_file,
            "max_bytes": settings.log_max_bytes,
            "backups": settings.log_backups,
            "formatter": "serving",
        }
    level = settings.log_level
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"serving": {"format": FORMAT}},
        "handlers": handlers,
        "loggers": {
            "_granian": {"handlers": list(handlers), "level": level, "propagate": False},
            # serving.observe writes one access line per request, with its latency.
            "granian.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }
