"""Server configuration: one declaration per setting, read from the environment.

Each field of `ServingSettings` carries its default, its environment variable and, when it is
also a `python -m serving` flag, the flag's help text. `from_env()` and the command line are both
derived from these declarations, so a default is written once, here. Flags override the
environment by setting the same variables, so granian's main process and every worker agree.

The registry settings (MLFLOW_TRACKING_URI, MODEL_NAME) default to `pipelines.config`'s, like
every other part of the project.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipelines.config import PROJECT_ROOT, Settings, env_or


def _aliases(text: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in text.split(",") if a.strip())


def _optional_path(text: str) -> Path | None:
    """A path, or None for 'none' (log to stderr only)."""
    return None if text.lower() == "none" else Path(text)


def _format(value: Any) -> str:
    """A value as its environment variable spells it (the inverse of the field's parser)."""
    match value:
        case None:
            return "none"
        case tuple():
            return ",".join(value)
        case _:
            return str(value)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (::ffff:127.0.0.1)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def setting(default: Any, env: str, help: str | None = None, parse: Callable | None = None) -> Any:
    """A field read from `env`; with `help`, also a command-line flag. `parse` turns the
    variable's text into the value (default: the type of `default`)."""
    parse = parse or type(default)
    return field(default=default, metadata={"env": env, "help": help, "parse": parse})


@dataclass(frozen=True)
class ServingSettings:
    host: str = setting("127.0.0.1", "SERVING_HOST", "address to bind")
    port: int = setting(5000, "SERVING_PORT", "port")
    workers: int = setting(2, "SERVING_WORKERS", "worker processes, about one per core")
    threads: int = setting(
        4, "SERVING_THREADS", "threads per worker for requests that may wait (/admin/*)"
    )
    tracking_uri: str = setting(
        Settings.mlflow_tracking_uri, "MLFLOW_TRACKING_URI", "MLflow tracking/registry URI"
    )
    model_name: str = setting(Settings.model_name, "MODEL_NAME", "registered model")
    aliases: tuple[str, ...] = setting(
        ("model1", "model2", "model3"), "SERVING_ALIASES", "comma-separated aliases", _aliases
    )
    # Seconds between registry polls; while an alias is not loaded, retries come sooner.
    poll_interval: float = setting(30.0, "SERVING_POLL_INTERVAL", "seconds between registry polls")
    max_batch: int = setting(10_000, "SERVING_MAX_BATCH", "most records in one batch request")
    max_body_bytes: int = setting(1024 * 1024, "SERVING_MAX_BODY_BYTES", "largest request body")
    header_timeout: float = setting(
        5.0,
        "SERVING_HEADER_TIMEOUT",
        "seconds a connection may take to send a request's headers; also how long an idle "
        "keep-alive connection is kept",
    )
    body_timeout: float = setting(
        10.0, "SERVING_BODY_TIMEOUT", "seconds a client may take to send a request body (408)"
    )
    max_connections: int = setting(
        2048, "SERVING_MAX_CONNECTIONS", "open connections per worker; more wait to be accepted"
    )
    max_requests: int = setting(
        512,
        "SERVING_MAX_REQUESTS",
        "requests a worker holds at once (receiving or answering); more get 503 at once",
    )
    backlog: int = setting(1024, "SERVING_BACKLOG", "connections the kernel queues for accept")
    graceful_timeout: float = setting(
        30.0,
        "SERVING_GRACEFUL_TIMEOUT",
        "seconds a stopping worker has to finish its requests before it is killed",
    )
    # Required for /admin/* when set; without it, /admin/* answers loopback clients only and the
    # server refuses to listen on any other address. Not a flag: it would show in `ps`.
    admin_token: str | None = setting(None, "SERVING_ADMIN_TOKEN", parse=str)
    log_file: Path | None = setting(
        PROJECT_ROOT / "logs" / "serving.log",
        "SERVING_LOG_FILE",
        "rotating log file, or 'none' for stderr only",
        _optional_path,
    )
    log_max_bytes: int = setting(
        10 * 1024 * 1024, "SERVING_LOG_MAX_BYTES", "log size before rotation"
    )
    log_backups: int = setting(5, "SERVING_LOG_BACKUPS", "rotated log files kept")
    log_level: str = setting("INFO", "SERVING_LOG_LEVEL", "DEBUG, INFO, WARNING...", str.upper)
    # Set by `python -m serving` for its workers: where `POST /admin/reload` reaches them all.
    reload_dir: Path | None = setting(None, "SERVING_RELOAD_DIR", parse=_optional_path)

    @classmethod
    def from_env(cls) -> ServingSettings:
        """Every setting from its variable; unset or blank variables keep the default."""
        values = {}
        for f in fields(cls):
            text = env_or(f.metadata["env"], "")
            if text:
                values[f.name] = f.metadata["parse"](text)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One `--flag` per setting that has help text, named after the field."""
        for f in fields(cls):
            if f.metadata["help"] is None:
                continue
            default = f.default if f.default is not MISSING else None
            parser.add_argument(
                f"--{f.name.replace('_', '-')}",
                dest=f.name,
                metavar=f.metadata["env"].removeprefix("SERVING_"),
                help=f"{f.metadata['help']} (default {_format(default)}; ${f.metadata['env']})",
            )

    @classmethod
    def export_arguments(cls, args: argparse.Namespace) -> None:
        """Set the variable of every flag given, checking its value parses first."""
        for f in fields(cls):
            value = getattr(args, f.name, None)
            if value is None:
                continue
            try:
                f.metadata["parse"](value)
            except ValueError as exc:
                raise SystemExit(f"--{f.name.replace('_', '-')}: {exc}") from None
            os.environ[f.metadata["env"]] = value
