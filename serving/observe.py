"""Per-request bookkeeping as WSGI middleware: request id, access log line, metrics, and draining
any body the app left unread.

It wraps the Flask app rather than using `before_request`/`after_request` hooks because it runs
on every request and reads the raw WSGI environ directly, which is several times cheaper than
going through Flask's request proxies; and its latency covers all of Flask's work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from serving import metrics

access_log = logging.getLogger("serving.access")

REQUEST_ID_KEY = "serving.request_id"

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class RequestObserver:
    """Wraps a WSGI app; `routes` are the known paths (others are counted as "unmatched")."""

    def __init__(self, app: WSGIApp, routes: set[str]) -> None:
        self.app = app
        self.routes = routes

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        start = time.perf_counter()
        sent = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = sent if 0 < len(sent) <= 64 and sent.isprintable() else os.urandom(16).hex()
        environ[REQUEST_ID_KEY] = request_id
        answer: list[Any] = []

        def start_with_id(status: str, headers: list[tuple[str, str]], exc_info=None):
            headers.append(("X-Request-ID", request_id))
            answer[:] = [status, headers]
            return start_response(status, headers, exc_info)

        body = self.app(environ, start_with_id)
        _drain(environ["wsgi.input"])
        elapsed = time.perf_counter() - start

        status, headers = answer
        code = int(status[:3])
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        endpoint = path if path in self.routes else "unmatched"
        metrics.REQUESTS.labels(endpoint, method, code).inc()
        metrics.LATENCY.labels(endpoint).observe(elapsed)
        length = next((v for k, v in headers if k == "Content-Length"), "-")
        access_log.info(
            '%s "%s %s" %d %s %.3fms id=%s',
            environ.get("REMOTE_ADDR", "-"),
            method,
            path,
            code,
            length,
            elapsed * 1000,
            request_id,
        )
        return body


def _drain(stream: Any, cap: int = 16 * 1024 * 1024) -> None:
    """Read and drop whatever body the app did not read (413, 415, 404...), up to `cap` bytes.

    Behind serving.gateway the body is already in memory and this costs nothing. A server that
    streams the body into the app (gunicorn, which the benchmark still runs) may otherwise close
    a keep-alive connection it has just announced as kept alive, and the client's next request
    on it fails; or, for a large body, the kernel resets the connection and the client never sees
    the 413.
    """
    while cap > 0 and (chunk := stream.read(min(65536, cap))):
        cap -= len(chunk)
