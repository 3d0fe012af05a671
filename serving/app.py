"""The Flask app factory: routes, JSON errors, request bookkeeping (serving.observe), poller.

Run it with `python -m serving` (granian, through serving.gateway). The process never imports
pyspark nor starts a JVM: models are read by `serving.predictor`.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge

from serving import api, logging_setup, metrics, ops
from serving.lean_flask import LeanFlask
from serving.observe import REQUEST_ID_KEY, RequestObserver
from serving.registry import ModelRegistry, Poller, Slot
from serving.reload import ReloadBoard
from serving.responses import error_response
from serving.settings import ServingSettings

log = logging.getLogger("serving")


def create_app(settings: ServingSettings | None = None, *, poll: bool = True) -> Flask:
    """Build the app. With `poll`, load the models now and re-resolve the aliases every
    `settings.poll_interval` seconds in a daemon thread; without it, call `registry.refresh()`."""
    settings = settings or ServingSettings.from_env()
    access_log = logging_setup.configure(
        settings.log_level, settings.log_file, settings.log_max_bytes, settings.log_backups
    )
    app = LeanFlask(__name__, static_folder=None)
    app.config.update(DEBUG=False, MAX_CONTENT_LENGTH=settings.max_body_bytes)
    registry = ModelRegistry(
        settings.tracking_uri, settings.model_name, settings.aliases, on_change=_export_slot
    )
    app.extensions["serving.settings"] = settings
    board = ReloadBoard(settings.reload_dir) if poll and settings.reload_dir else None
    app.extensions["serving.registry"] = registry
    app.extensions["serving.reload_board"] = board
    app.register_blueprint(api.create_blueprint(settings.aliases))
    app.register_blueprint(ops.bp)
    api.add_direct_views(app, settings.aliases)
    routes = {r.rule for r in app.url_map.iter_rules()}
    app.wsgi_app = RequestObserver(app.wsgi_app, routes, access_log)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal_error)
    if poll:
        # Load before returning: granian starts a worker's accept loop only after this, so no
        # worker answers 503 for models that are about to load. If the registry is down, this
        # returns after one failed attempt and the poller keeps trying.
        poller = Poller(registry, settings.poll_interval, board)
        poller.refresh()
        poller.start()
    log.info(
        "serving %s aliases %s from %s",
        settings.model_name,
        ",".join(settings.aliases),
        settings.tracking_uri,
    )
    return app


def _export_slot(alias: str, slot: Slot) -> None:
    if slot.model is not None:
        metrics.MODEL_VERSION.labels(alias).set(slot.model.version)
    metrics.MODEL_LOADED.labels(alias).set(int(slot.model is not None and slot.error is None))


def _http_error(exc: HTTPException) -> Response:
    """Every 4xx from routing or Werkzeug as `{"error": ...}` instead of an HTML page."""
    match exc:
        case NotFound():
            message = f"no such endpoint: {request.method} {request.path}"
        case MethodNotAllowed():
            allowed = ", ".join(m for m in sorted(exc.valid_methods or []) if m != "OPTIONS")
            message = f"method {request.method} is not allowed on {request.path}; use {allowed}"
        case RequestEntityTooLarge():
            limit = request.max_content_length
            message = f"request body is larger than the limit of {limit} bytes"
        case _:
            message = exc.description or exc.name
    response = error_response(message, exc.code or 500)
    if isinstance(exc, MethodNotAllowed):
        response.headers["Allow"] = ", ".join(sorted(exc.valid_methods or []))
    return response


def _internal_error(exc: Exception) -> Response:
    """Anything unexpected: the traceback goes to the log, the client gets the request id."""
    request_id = request.environ.get(REQUEST_ID_KEY, "-")
    log.exception("unhandled error, request id %s: %s %s", request_id, request.method, request.path)
    return error_response("internal error", 500, request_id=request_id)
