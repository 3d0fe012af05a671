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


def json_response(payload: object, status: int = 200) -> Response:
    """The body is already bytes: handed to the server as it is (`direct_passthrough`), not
    wrapped in Werkzeug's encoding and closing iterators."""
    return Response(
        json_body(payload), status=status, content_type="application/json", direct_passthrough=True
    )


def error_response(message: str, status: int, **extra: Any) -> Response:
    return json_response(error_payload(message, **extra), status)
