"""Per-request bookkeeping as WSGI middleware: request id, access log line, metrics, and draining
any body the app left unread.

It wraps the Flask app rather than using `before_request`/`after_request` hooks because it runs
on every request and reads the raw WSGI environ directly, which is several times cheaper than
going through Flask's request proxies; and its latency covers all of Flask's work. For the same
reason the labelled metric of each endpoint, method and status is looked up once, not per
request, and the request id comes from `random` rather than a system call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from random import getrandbits
from typing import Any

from serving import metrics
from serving.logging_setup import AccessLog

REQUEST_ID_KEY = "serving.request_id"

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


class RequestObserver:
    """Wraps a WSGI app; `routes` are the known paths (others are counted as "unmatched")."""

    def __init__(self, app: WSGIApp, routes: set[str], access_log: AccessLog) -> None:
        self.app = app
        self.routes = routes
        self.access_log = access_log
        self._counted = metrics.LabelledCache(metrics.REQUESTS)
        self._timed = metrics.LabelledCache(metrics.LATENCY)

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        start = time.perf_counter()
        request_id = environ.get("HTTP_X_REQUEST_ID", "")
        if not (0 < len(request_id) <= 64 and request_id.isprintable()):
            # random is reseeded in every forked worker: ids do not repeat across workers.
            request_id = f"{getrandbits(128):032x}"
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
        self._counted.get(endpoint, method, code).inc()
        self._timed.get(endpoint).observe(elapsed)
        length = "-"
        for name, value in headers:
            if name == "Content-Length":
                length = value
                break
        self.access_log(
            f'{environ.get("REMOTE_ADDR", "-")} "{method} {path}" {code} {length} '
            f"{elapsed * 1000:.3f}ms id={request_id}"
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
