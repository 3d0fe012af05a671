"""JSON bodies and responses; the one place where the `{"error": ...}` body is built.

The Flask handlers and the gateway in front of them (serving.gateway) both answer errors through
`error_payload`, so every 4xx and 5xx the server sends has the same shape (schemas.Error).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Response


def json_body(payload: object) -> bytes:
    """`json.dumps` as the seed wrote it: `{"cluster": 2}`, with a space after the colon."""
    return json.dumps(payload).encode()


def error_payload(message: str, **extra: Any) -> dict[str, Any]:
    """`{"error": message, ...}`: what went wrong, in words that name the field or limit."""
    return {"error": message, **extra}


def cluster_body(cluster: int) -> bytes:
    """`json_body({"cluster": cluster})`, the answer to every single record, made without
    `json.dumps` (a few microseconds of a prediction's CPU)."""
    return b'{"cluster": %d}' % cluster


def json_response(payload: object, status: int = 200) -> Response:
    return body_response(json_body(payload), status)


def body_response(
    body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A JSON body already encoded: handed to the server as it is (`direct_passthrough`), not
    wrapped in Werkzeug's encoding and closing iterators."""
    return Response(body, status, headers, content_type="application/json", direct_passthrough=True)


def error_response(message: str, status: int, **extra: Any) -> Response:
    return json_response(error_payload(message, **extra), status)
