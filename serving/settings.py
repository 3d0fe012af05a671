"""Server configuration: environment variables (SERVING_*) with defaults; `python -m serving` flags
override them by setting the same variables, so gunicorn's master and every worker agree.

The registry settings (MLFLOW_TRACKING_URI, MODEL_NAME) come from `pipelines.config`, like every
other part of the project.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import PROJECT_ROOT, Settings, env_or


@dataclass(frozen=True)
class ServingSettings:
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    threads: int = 4
    tracking_uri: str = Settings.mlflow_tracking_uri
    model_name: str = Settings.model_name
    aliases: tuple[str, ...] = ("model1", "model2", "model3")
    # Seconds between registry polls; while an alias is not loaded, retries come sooner.
    poll_interval: float = 30.0
    max_batch: int = 10_000
    max_body_bytes: int = 1024 * 1024
    admin_token: str | None = None
    log_file: Path | None = PROJECT_ROOT / "logs" / "serving.log"
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    log_level: str = "INFO"
    # Set by serving.gunicorn_conf for its workers: where `POST /admin/reload` reaches them all.
    reload_dir: Path | None = None

    @classmethod
    def from_env(cls) -> ServingSettings:
        base = Settings.from_env()
        log_file = env_or("SERVING_LOG_FILE", str(cls.log_file))
        reload_dir = env_or("SERVING_RELOAD_DIR", "")
        return cls(
            host=env_or("SERVING_HOST", cls.host),
            port=int(env_or("SERVING_PORT", str(cls.port))),
            workers=int(env_or("SERVING_WORKERS", str(cls.workers))),
            threads=int(env_or("SERVING_THREADS", str(cls.threads))),
            tracking_uri=base.mlflow_tracking_uri,
            model_name=base.model_name,
            aliases=tuple(
                a.strip() for a in env_or("SERVING_ALIASES", ",".join(cls.aliases)).split(",")
            ),
            poll_interval=float(env_or("SERVING_POLL_INTERVAL", str(cls.poll_interval))),
            max_batch=int(env_or("SERVING_MAX_BATCH", str(cls.max_batch))),
            max_body_bytes=int(env_or("SERVING_MAX_BODY_BYTES", str(cls.max_body_bytes))),
            admin_token=os.environ.get("SERVING_ADMIN_TOKEN") or None,
            # SERVING_LOG_FILE=none logs to stderr only.
            log_file=None if log_file.lower() == "none" else Path(log_file),
            log_max_bytes=int(env_or("SERVING_LOG_MAX_BYTES", str(cls.log_max_bytes))),
            log_backups=int(env_or("SERVING_LOG_BACKUPS", str(cls.log_backups))),
            log_level=env_or("SERVING_LOG_LEVEL", cls.log_level).upper(),
            reload_dir=Path(reload_dir) if reload_dir else None,
        )
