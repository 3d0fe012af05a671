"""The OpenAPI 3.1 description served at `/openapi.json`, built from the request schema itself."""

from __future__ import annotations

from typing import Any

from serving.schemas import RECORD
from serving.settings import ServingSettings

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
    "required": ["error"],
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _predict(alias: str, max_batch: int) -> dict[str, Any]:
    record = {"$ref": "#/components/schemas/CustomerRecord"}
    return {
        "post": {
            "summary": f"Cluster of one customer, or of a batch, by the model at alias {alias}",
            "operationId": f"predict_cluster_{alias}",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                record,
                                {
                                    "type": "array",
                                    "items": record,
                                    "minItems": 1,
                                    "maxItems": max_batch,
                                },
                            ]
                        },
                        "example": {"TotalQuantity": 100, "TotalAmount": 2000.0, "NumInvoices": 5},
                    }
                },
            },
            "responses": {
                "200": _ok(
                    '`{"cluster": n}` for one record, `{"clusters": [...]}` for a batch',
                    {
                        "oneOf": [
                            {"type": "object", "properties": {"cluster": {"type": "integer"}}},
                            {
                                "type": "object",
                                "properties": {
                                    "clusters": {"type": "array", "items": {"type": "integer"}}
                                },
                            },
                        ]
                    },
                ),
                "400": _error("Malformed JSON or an invalid field (the message names it)"),
                "413": _error("Body larger than the configured limit"),
                "415": _error("Content-Type is not application/json"),
                "503": _error("No model is loaded for this alias (the message says why)"),
                "500": _error("Unexpected failure; the request id points to the log"),
            },
        }
    }


def document(settings: ServingSettings) -> dict[str, Any]:
    paths: dict[str, Any] = {
        f"/predict_cluster_{alias}": _predict(alias, settings.max_batch)
        for alias in settings.aliases
    }
    paths |= {
        "/models": {
            "get": {
                "summary": "Per alias: version, run id, window, k, silhouette, cluster centers",
                "responses": {"200": _ok("The loaded models")},
            }
        },
        "/health": {"get": {"summary": "Liveness", "responses": {"200": _ok("Alive")}}},
        "/ready": {
            "get": {
                "summary": "Readiness: every alias resolved and loaded",
                "responses": {"200": _ok("Ready"), "503": _error("Not ready, with reasons")},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/admin/reload": {
            "post": {
                "summary": "Re-resolve the aliases now in every worker (bearer token if "
                "SERVING_ADMIN_TOKEN)",
                "responses": {
                    "200": _ok("Every worker reloaded: per alias state, workers reloaded"),
                    "202": _ok("Reloaded here; the workers under `pending` have not confirmed"),
                    "401": _error("Missing token"),
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Customer segmentation", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"CustomerRecord": RECORD.json_schema(), "Error": _ERROR},
        },
    }
