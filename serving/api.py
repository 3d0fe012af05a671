"""The prediction endpoints (`POST /predict_cluster_<alias>`) and `GET /models`.

The single-record path is the hot one: validate the raw bytes, read the alias's slot once, run the
pure-Python nearest-center search, write a tiny JSON body. Batches go through numpy. Valid requests
are answered by a direct view (`direct_predict`, see serving.lean_flask), which shares all of that
with the Flask view and leaves every other answer to it.
"""

from __future__ import annotations

from io import BytesIO
from itertools import chain
from operator import itemgetter
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from pipelines.contract import EXAMPLE_RECORD
from serving import metrics
from serving.lean_flask import DirectView, LeanFlask, WSGIAnswer
from serving.openapi import documented, error
from serving.registry import ModelRegistry
from serving.responses import (
    body_response,
    cluster_body,
    error_response,
    json_body,
    json_response,
)
from serving.schemas import (
    BadRequest,
    Cluster,
    Clusters,
    CustomerRecord,
    Models,
    parse_body,
    predict_request,
)
from serving.settings import ServingSettings

JSON = "application/json"
BLUEPRINT = "api"
_ROWS = metrics.LabelledCache(metrics.ROWS)


def current_registry() -> ModelRegistry:
    return current_app.extensions["serving.registry"]


def _read_body(environ: dict, limit: int) -> bytes:
    """The raw body; 413 beyond `limit` bytes, also when it comes chunked (Werkzeug's stream
    then stops quietly at the limit, so the rest would be cut off rather than refused)."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise RequestEntityTooLarge()
        return environ["wsgi.input"].read(length)
    if not environ.get("wsgi.input_terminated"):  # no length, no framing: no body
        return b""
    body = environ["wsgi.input"].read(limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    return body


def _matrix(records: list[CustomerRecord], columns: tuple[str, ...]) -> np.ndarray:
    """Records as an (n, len(columns)) float64 array in the model's column order."""
    values = map(itemgetter(*columns), records)  # itemgetter and fromiter: no Python loop
    if len(columns) > 1:
        values = chain.from_iterable(values)
    flat = np.fromiter(values, np.float64, count=len(records) * len(columns))
    return flat.reshape(len(records), len(columns))


class ModelUnavailable(Exception):
    """No model is loaded for the alias; the message says why."""


def _predict(body: bytes, alias: str, registry: ModelRegistry, max_batch: int) -> tuple[bytes, str]:
    """The 200 body for a request body, and the model version that answered it. Raises
    BadRequest for an invalid body, ModelUnavailable without a model."""
    parsed = parse_body(body, max_batch)
    slot = registry.slot(alias)  # read once: a swap does not affect it
    if slot.model is None:
        raise ModelUnavailable(f"model {alias} is not available: {slot.error}")
    model = slot.model.model
    columns = model.input_cols
    if isinstance(parsed, dict):
        answer = cluster_body(model.predict_one([parsed[c] for c in columns]))
        rows = 1
    else:
        clusters = model.predict(_matrix(parsed, columns))
        answer, rows = json_body({"clusters": clusters.tolist()}), len(clusters)
    _ROWS.get(alias).inc(rows)
    return answer, str(slot.model.version)


@documented(
    request=lambda settings: predict_request(settings.max_batch),
    example=EXAMPLE_RECORD,
    responses={
        200: (
            Cluster | Clusters,
            '`{"cluster": n}` for one record, `{"clusters": [...]}` for a batch',
        ),
        400: error("Malformed JSON, an invalid or duplicate field (the message names it)"),
        415: error("Content-Type is not application/json"),
        503: error("No model is loaded for this alias (the message says why)"),
        500: error("Unexpected failure; the request id points to the log"),
    },
)
def predict(alias: str) -> Response:
    """Cluster of one customer, or of each customer of a batch, by the model at this alias.

    Assigns a cluster to one record (`{"cluster": n}`) or to a list (`{"clusters": [...]}`)."""
    # The exact header most clients send is compared as it is; anything else is parsed.
    environ = request.environ
    if environ.get("CONTENT_TYPE") != JSON and request.mimetype != JSON:
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.mimetype or 'none'}"
        )
    extensions = current_app.extensions
    settings: ServingSettings = extensions["serving.settings"]
    body = _read_body(environ, settings.max_body_bytes)
    try:
        answer, version = _predict(body, alias, extensions["serving.registry"], settings.max_batch)
    except BadRequest as exc:
        return error_response(str(exc), 400)
    except ModelUnavailable as exc:
        return error_response(str(exc), 503)
    return body_response(answer, headers=[("X-Model-Version", version)])


def direct_predict(registry: ModelRegistry, settings: ServingSettings) -> DirectView:
    """`predict` as a direct view (serving.lean_flask): the same 200 answers, without Flask's
    request and response objects. Any other answer (an unexpected Content-Type or length, an
    invalid body, no model, a failure) is left to `predict`, so Flask's error handling writes it."""
    max_body, max_batch = settings.max_body_bytes, settings.max_batch

    def view(environ: dict[str, Any], alias: str) -> WSGIAnswer | None:
        length = environ.get("CONTENT_LENGTH", "")
        if environ.get("CONTENT_TYPE") != JSON or not (length.isascii() and length.isdigit()):
            return None
        if int(length) > max_body:
            return None
        body = environ["wsgi.input"].read(int(length))
        try:
            answer, version = _predict(body, alias, registry, max_batch)
        except Exception:  # BadRequest, ModelUnavailable or a failure: Flask answers it
            environ["wsgi.input"] = BytesIO(body)
            return None
        headers = [("X-Model-Version", version), ("Content-Type", JSON)]
        headers.append(("Content-Length", str(len(answer))))
        return "200 OK", headers, answer

    return view


@documented(responses={200: (Models, "The loaded models")})
def models() -> Response:
    """Per alias: version, run id, window, k, silhouette, cluster centers; or why none is loaded."""
    registry = current_registry()
    out = {}
    for alias in registry.aliases:
        slot = registry.slot(alias)
        info = slot.model.describe() if slot.model else {"version": None}
        out[alias] = info | {"error": slot.error}
    return json_response({"model_name": registry.model_name, "aliases": out})


def add_direct_views(app: LeanFlask, aliases: tuple[str, ...]) -> None:
    """`direct_predict` for every alias's endpoint of the blueprint."""
    view = direct_predict(app.extensions["serving.registry"], app.extensions["serving.settings"])
    for alias in aliases:
        app.add_direct_view(f"{BLUEPRINT}.predict_{alias}", view)


def create_blueprint(aliases: tuple[str, ...]) -> Blueprint:
    """One fixed route per configured alias: any other path is a plain 404."""
    bp = Blueprint(BLUEPRINT, __name__)
    for alias in aliases:
        bp.add_url_rule(
            f"/predict_cluster_{alias}",
            endpoint=f"predict_{alias}",
            view_func=predict,
            methods=["POST"],
            defaults={"alias": alias},
        )
    bp.add_url_rule("/models", view_func=models, methods=["GET"])
    return bp
