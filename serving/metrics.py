"""Prometheus metrics: requests and latency per endpoint (one endpoint per model), rows predicted
and the version each alias serves.

Under gunicorn every worker is a process with its own counters, so `python -m serving` sets
PROMETHEUS_MULTIPROC_DIR before this module is imported and `/metrics` aggregates the workers'
files (prometheus_client multiprocess mode). Without it (tests, the Flask test client) the default
in-process registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter(
    "serving_requests_total",
    "HTTP requests answered, by endpoint (route), method and status code.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "serving_request_duration_seconds",
    "Time from request start to response, by endpoint (route).",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
ROWS = Counter(
    "serving_predicted_rows_total",
    "Records assigned a cluster, by model alias.",
    ["alias"],
)
MODEL_VERSION = Gauge(
    "serving_model_version",
    "Registered model version loaded for each alias (absent until one is loaded).",
    ["alias"],
    multiprocess_mode="livemostrecent",
)
MODEL_LOADED = Gauge(
    "serving_model_loaded",
    "1 if the alias has a model loaded and its last refresh succeeded, else 0.",
    ["alias"],
    multiprocess_mode="livemin",
)


def render() -> tuple[bytes, str]:
    """The exposition text: aggregated over workers in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
