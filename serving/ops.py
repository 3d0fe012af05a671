"""Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document, reload.

`/admin/*` is safe by default: with SERVING_ADMIN_TOKEN set, it takes that bearer token from
anyone; without it, it answers loopback clients only (and `python -m serving` refuses to listen
on any other address, see serving.server).
"""

from __future__ import annotations

import hmac
from typing import Any

from flask import Blueprint, Response, current_app, request

from serving import metrics
from serving.api import current_registry
from serving.openapi import TEXT, documented, error
from serving.openapi import document as openapi_document
from serving.reload import ReloadBoard
from serving.responses import error_response, json_response
from serving.schemas import Health, NotReady, Ready, Reloaded
from serving.settings import ServingSettings, is_loopback

bp = Blueprint("ops", __name__)
RELOAD_WAIT = 20.0  # seconds `POST /admin/reload` waits for the other workers
ADMIN_TOKEN_HELP = "set SERVING_ADMIN_TOKEN and send it as `Authorization: Bearer <token>`"


@bp.before_request
def guard_admin() -> Response | None:
    """Every `/admin/*` request: the token when one is set, else a loopback client."""
    if not request.path.startswith("/admin/"):
        return None
    token = current_app.extensions["serving.settings"].admin_token
    if token is None:
        client = request.remote_addr or ""
        if is_loopback(client):
            return None
        return error_response(
            f"/admin/* answers only loopback clients while no admin token is set (this request "
            f"came from {client}); {ADMIN_TOKEN_HELP}",
            403,
        )
    sent = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if hmac.compare_digest(sent.encode(), token.encode()):
        return None
    response = error_response("a valid bearer token is required", 401)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


@bp.get("/health")
@documented(responses={200: (Health, "Alive")})
def health() -> Response:
    """Liveness: the process answers. Says nothing about models (that is /ready)."""
    return json_response({"status": "ok"})


@bp.get("/ready")
@documented(
    responses={
        200: (Ready, "Every alias has a model loaded"),
        503: (NotReady, "Some alias has no model; `error` says why"),
    }
)
def ready() -> Response:
    """Readiness: 200 once every alias has a model loaded; 503 with the reasons otherwise."""
    registry = current_registry()
    slots = {alias: registry.slot(alias) for alias in registry.aliases}
    body = {alias: s.state() for alias, s in slots.items()}
    missing = [f"{a}: {s.error}" for a, s in slots.items() if s.model is None]
    if missing:
        return error_response("; ".join(missing), 503, ready=False, models=body)
    return json_response({"ready": True, "models": body})


@bp.get("/metrics")
@documented(responses={200: (TEXT, "Prometheus exposition format, summed over the workers")})
def prometheus() -> Response:
    """Prometheus metrics: requests and latency per endpoint, rows, versions loaded."""
    payload, content_type = metrics.render()
    return Response(payload, content_type=content_type)


@bp.get("/openapi.json")
@documented(responses={200: (dict[str, Any], "This document")})
def openapi() -> Response:
    """This OpenAPI document, derived from the routes and their schema models."""
    settings: ServingSettings = current_app.extensions["serving.settings"]
    return json_response(openapi_document(current_app, settings))


@bp.post("/admin/reload")
@documented(
    responses={
        200: (Reloaded, "Every worker reloaded: per alias state, workers reloaded"),
        202: (Reloaded, "Reloaded here; the workers under `pending` have not confirmed yet"),
        401: error("A token is set and the request did not carry it"),
        403: error("No token is set and the client is not on loopback"),
    }
)
def reload() -> Response:
    """Re-resolve the aliases now, in every worker; answers once they all have (or 20 s passed).

    Needs the bearer token when SERVING_ADMIN_TOKEN is set; a loopback client otherwise."""
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
