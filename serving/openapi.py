"""The OpenAPI 3.1 document served at `/openapi.json`, derived from the app's routes and the schema
models of serving.schemas: nothing in it is written by hand but the summaries (each view's
docstring) and one line per status code.

A view declares what it takes and answers with `@documented(...)`; `document(app)` walks the URL
map, so a route added without a declaration is simply absent, and a model changed in schemas.py
changes the document with it. The gateway in front of Flask (serving.gateway) adds its own
answers to every operation: 503 when a worker is at its limit of requests, and 408 and 413 for a
body too slow or too large.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from pydantic import TypeAdapter

from serving.schemas import Error
from serving.settings import ServingSettings

REF = "#/components/schemas/{model}"
TEXT = str  # a response model of `str` is served as text/plain

# The gateway's answers, on every operation (bodies: only where one is taken).
GATEWAY_RESPONSES = {503: "The worker holds SERVING_MAX_REQUESTS requests already; retry"}
GATEWAY_BODY_RESPONSES = {
    408: "The body did not arrive within SERVING_BODY_TIMEOUT seconds",
    413: "The body is larger than SERVING_MAX_BODY_BYTES",
}


@dataclass(frozen=True)
class Operation:
    """What a view takes and answers: status -> (model, description)."""

    responses: dict[int, tuple[Any, str]]
    request: Callable[[ServingSettings], Any] | None = None
    example: Any = None


def documented(
    *,
    responses: dict[int, tuple[Any, str]],
    request: Callable[[ServingSettings], Any] | None = None,
    example: Any = None,
) -> Callable:
    """Declare a view's request model (a function of the settings, for limits such as the batch
    size) and its responses; errors may be given as just a description (model: Error)."""

    def mark(view: Callable) -> Callable:
        view.openapi = Operation(responses=responses, request=request, example=example)
        return view

    return mark


def error(description: str) -> tuple[Any, str]:
    return Error, description


def document(app: Flask, settings: ServingSettings) -> dict[str, Any]:
    operations: list[tuple[str, str, str, Operation]] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        view = app.view_functions[rule.endpoint]
        spec: Operation | None = getattr(view, "openapi", None)
        if spec is None:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operations.append((rule.rule, method.lower(), _summary(view), spec))

    # Every model once, so each gets a single entry under components/schemas.
    adapters: dict[Any, TypeAdapter] = {}
    for _, _, _, spec in operations:
        models = [model for model, _ in spec.responses.values()] + [Error]
        if spec.request is not None:
            models.append(spec.request(settings))
        for model in models:
            if model is not TEXT and model not in adapters:
                adapters[model] = TypeAdapter(model)
    inputs = [(model, "validation", adapter) for model, adapter in adapters.items()]
    schemas, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)

    paths: dict[str, dict[str, Any]] = {}
    for path, method, summary, spec in operations:
        responses = dict(spec.responses)
        extra = GATEWAY_RESPONSES | (GATEWAY_BODY_RESPONSES if spec.request else {})
        for status, description in extra.items():
            model, mine = responses.get(status, (Error, ""))
            responses[status] = (model, f"{mine}; or: {description}" if mine else description)
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": path.strip("/").replace("/", "_"),
            "responses": {
                str(status): _content(description, model, schemas)
                for status, (model, description) in sorted(responses.items())
            },
        }
        if spec.request is not None:
            body = {"schema": schemas[(spec.request(settings), "validation")]}
            if spec.example is not None:
                body["example"] = spec.example
            operation["requestBody"] = {"required": True, "content": {"application/json": body}}
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Customer segmentation", "version": "1"},
        "paths": paths,
        "components": {"schemas": definitions.get("$defs", {})},
    }


def _content(description: str, model: Any, schemas: dict) -> dict[str, Any]:
    if model is TEXT:
        media, schema = "text/plain", {"type": "string"}
    else:
        media, schema = "application/json", schemas[(model, "validation")]
    return {"description": description, "content": {media: {"schema": schema}}}


def _summary(view: Callable) -> str:
    return " ".join((view.__doc__ or view.__name__).strip().split("\n\n")[0].split())
