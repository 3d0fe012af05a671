"""Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document, reload."""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, current_app, request

from serving import metrics
from serving.api import current_registry, json_response
from serving.openapi import document
from serving.reload import ReloadBoard
from serving.settings import ServingSettings

bp = Blueprint("ops", __name__)
RELOAD_WAIT = 20.0  # seconds `POST /admin/reload` waits for the other workers


@bp.get("/health")
def health() -> Response:
    """Alive: the process answers. Says nothing about models (that is /ready)."""
    return json_response({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    """200 once every alias has a model loaded; 503 with the reasons otherwise."""
    registry = current_registry()
    slots = {alias: registry.slot(alias) for alias in registry.aliases}
    body = {alias: s.state() for alias, s in slots.items()}
    missing = [f"{a}: {s.error}" for a, s in slots.items() if s.model is None]
    if missing:
        return json_response({"ready": False, "error": "; ".join(missing), "models": body}, 503)
    return json_response({"ready": True, "models": body})


@bp.get("/metrics")
def prometheus() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    settings: ServingSettings = current_app.extensions["serving.settings"]
    return json_response(document(settings))


@bp.post("/admin/reload")
def reload() -> Response:
    """Re-resolve every alias now, in every worker; answers once they all have (or 20 s passed)."""
    token = current_app.extensions["serving.settings"].admin_token
    if token is not None:
        sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            response = json_response({"error": "a valid bearer token is required"}, 401)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
    registry = current_registry()
    board: ReloadBoard | None = current_app.extensions["serving.reload_board"]
    if board:  # every worker's poller refreshes, this one's included
        reloaded, pending = board.wait(board.request(), timeout=RELOAD_WAIT)
    else:  # a single process without a poller (create_app(poll=False))
        registry.refresh()
        reloaded, pending = 1, []
    body = {
        "models": {alias: registry.slot(alias).state() for alias in registry.aliases},
        "workers": {"reloaded": reloaded, "pending": pending},
    }
    # 202: asked, but some worker has not confirmed yet (it still will, by its next poll at worst).
    return json_response(body, 202 if pending else 200)
