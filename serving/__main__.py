"""`python -m serving`: the model server under gunicorn, on 127.0.0.1:5000 unless told otherwise.

Flags override the SERVING_* / MLFLOW_TRACKING_URI / MODEL_NAME environment variables by setting
them, so the gunicorn master and its workers read one configuration (serving.settings).
"""

from __future__ import annotations

import argparse
import os

from gunicorn.app.base import BaseApplication

FLAGS = {
    "host": ("SERVING_HOST", str, "address to bind (default 127.0.0.1)"),
    "port": ("SERVING_PORT", int, "port (default 5000)"),
    "workers": ("SERVING_WORKERS", int, "worker processes (default 2, about one per core)"),
    "threads": ("SERVING_THREADS", int, "threads per worker (default 4)"),
    "tracking_uri": ("MLFLOW_TRACKING_URI", str, "MLflow tracking/registry URI"),
    "model_name": ("MODEL_NAME", str, "registered model (default customer-segmentation)"),
    "aliases": ("SERVING_ALIASES", str, "comma-separated aliases (default model1,model2,model3)"),
    "poll_interval": ("SERVING_POLL_INTERVAL", float, "seconds between registry polls (30)"),
    "max_batch": ("SERVING_MAX_BATCH", int, "most records in one batch request (10000)"),
    "max_body_bytes": ("SERVING_MAX_BODY_BYTES", int, "largest request body (1048576)"),
    "log_file": ("SERVING_LOG_FILE", str, "rotating log file, or 'none' (logs/serving.log)"),
    "log_max_bytes": ("SERVING_LOG_MAX_BYTES", int, "log size before rotation (10 MiB)"),
    "log_backups": ("SERVING_LOG_BACKUPS", int, "rotated log files kept (5)"),
    "log_level": ("SERVING_LOG_LEVEL", str, "DEBUG, INFO, WARNING... (INFO)"),
}


class ServingApplication(BaseApplication):
    """Gunicorn, configured from serving.gunicorn_conf, serving `serving.app.create_app()`."""

    def load_config(self) -> None:
        from serving import gunicorn_conf

        for key, value in vars(gunicorn_conf).items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)
        # Import the app and MLflow's store modules once in the master, so forked workers start
        # with them loaded (about a second each, otherwise). Importing opens no connection.
        import mlflow.store.model_registry.rest_store
        import mlflow.store.model_registry.sqlalchemy_store
        import mlflow.store.tracking.rest_store
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        import serving.app  # noqa: F401

    def load(self):
        from serving.app import create_app

        return create_app()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    for name, (env, kind, help_text) in FLAGS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=f"{help_text}; ${env}")
    args = parser.parse_args(argv)
    for name, (env, _, _) in FLAGS.items():
        value = getattr(args, name)
        if value is not None:
            os.environ[env] = str(value)
    ServingApplication().run()


if __name__ == "__main__":
    main()
