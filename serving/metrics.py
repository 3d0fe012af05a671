"""Prometheus metrics: requests and latency per endpoint (one endpoint per model), rows predicted
and the version each alias serves.

Every worker is a process with its own counters, so `python -m serving` sets
PROMETHEUS_MULTIPROC_DIR before this module is imported and `/metrics` aggregates the workers'
files (prometheus_client multiprocess mode). Counters of a worker that died still count; its
"live" gauges (the versions loaded) are dropped. Without the variable (tests, the Flask test
client) the default in-process registry is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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

from serving.reload import alive

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


class LabelledCache:
    """A metric's children by label values, made by `labels()` once per distinct values:
    `labels()` converts, checks and locks on every call, and the hot path calls it per request.
    Holds at most `limit` children; beyond, `labels()` is called each time (a client sending
    many distinct methods still gets counted)."""

    def __init__(self, metric: Any, limit: int = 256) -> None:
        self.metric = metric
        self.limit = limit
        self._children: dict[tuple, Any] = {}

    def get(self, *values: object) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self.metric.labels(*values)
            if len(self._children) < self.limit:
                self._children[values] = child
        return child


def render() -> tuple[bytes, str]:
    """The exposition text: aggregated over workers in multiprocess mode."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        _forget_dead_workers(Path(directory))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def _forget_dead_workers(directory: Path) -> None:
    """Remove the live gauges of workers that are gone (granian has no exit hook for them)."""
    for path in directory.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        if pid.isdigit() and not alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), str(directory))
