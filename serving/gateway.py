"""The WSGI gateway between granian and the Flask app: bodies are received before the app runs.

granian's own WSGI interface hands a request to a Python thread as soon as its headers are in and
lets the app read the body from that thread: a client that trickles its body holds the thread for
as long as it likes, and granian has no body-read timeout. With 200 such clients every normal
request timed out. So the server uses granian's RSGI (asyncio) interface and this gateway:

- the body is awaited on the worker's event loop, where a slow client costs a coroutine, not a
  thread, under a deadline (`body_timeout`: 408) and a size limit (`max_body_bytes`: 413, from the
  Content-Length before reading, or as soon as a chunked body passes it). The deadlines are kept
  in arrival order and swept every `SWEEP_EVERY` seconds, which cancels the reads past theirs:
  an `asyncio.timeout` per request (a timer and a context manager) cost several times more;
- only then is the Flask app called, as WSGI (PEP 3333), with the whole body in `wsgi.input`: on
  the event loop thread itself (a prediction is ~0.1 ms of CPU, and one process runs one Python
  thread at a time anyway), except `/admin/*`, which may wait on the other workers and runs on a
  pool of `threads` threads. The requests on the loop run one after another, so they share one
  Flask application context, pushed once (`held_context`) rather than once per request;
- a worker holding `max_requests` requests (receiving or being answered) refuses the next at once:
  503 with Retry-After, rather than letting it queue unseen.

Headers are granian's job (hyper): `header_timeout` bounds the time to send them and the idle time
of a keep-alive connection; `max_connections` bounds the connections a worker holds.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes

from granian.rsgi import ProtocolClosed

from serving.responses import error_payload, json_body
from serving.settings import ServingSettings

log = logging.getLogger("serving.gateway")

WSGIApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], bytes]
OFFLOADED = ("/admin/",)  # paths whose requests may block: run on the thread pool
SWEEP_EVERY = 0.25  # seconds between two looks for body reads past their deadline
NO_BODY = {"GET", "HEAD", "OPTIONS", "DELETE"}
JSON = ("Content-Type", "application/json")


def create() -> Gateway:
    """The RSGI app for a granian worker (granian calls this factory in each worker)."""
    _exit_on_stop_while_loading()
    from serving.app import create_app

    settings = ServingSettings.from_env()
    app = create_app(settings)
    held_context = contextvars.copy_context()
    held_context.run(app.app_context().push)  # Flask reuses an app context already pushed
    return Gateway(app, settings, held_context)


def _exit_on_stop_while_loading() -> None:
    """A worker stopped before it serves has nothing to finish: exit at once.

    Until granian installs its handlers (once this factory returns), a fork of the main process
    has the main process's, which would swallow the signal and leave the worker running.
    """

    def leave(signum: int, frame: object) -> None:
        sys.exit(0)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, leave)


def error_answer(status: int, message: str, *headers: tuple[str, str]) -> Answer:
    """An error the gateway answers itself; the connection is closed after it."""
    return status, [JSON, ("Connection", "close"), *headers], json_body(error_payload(message))


class Gateway:
    """An RSGI application (granian's asyncio interface) that serves a WSGI app.

    With `held_context`, the app runs inside that context on the event loop thread (not on the
    pool's threads): for a Flask app, one with its application context pushed."""

    def __init__(
        self,
        app: WSGIApp,
        settings: ServingSettings,
        held_context: contextvars.Context | None = None,
    ) -> None:
        self.app = app
        self.body_timeout = settings.body_timeout
        self.max_body = settings.max_body_bytes
        self.max_requests = settings.max_requests
        self.threads = settings.threads
        self.held_context = held_context
        self.in_flight = 0  # touched on the event loop thread only, as the two below
        self._deadlines: dict[asyncio.Task, float] = {}  # body reads, in deadline order
        self._expired: set[asyncio.Task] = set()  # reads cancelled for their deadline
        self.executor: ThreadPoolExecutor | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._header_keys: dict[str, str | None] = {}
        self._servers: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._base = {
            "SCRIPT_NAME": "",
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.input_terminated": True,
        }

    # granian calls these once per worker, around serving.
    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="serving")
        loop.call_soon(self._sweep)

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)  # requests on the pool finish first

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        if self.in_flight >= self.max_requests:
            message = (
                f"the server is at its limit of {self.max_requests} requests in progress per "
                "worker; retry shortly"
            )
            protocol.response_bytes(*error_answer(503, message, ("Retry-After", "1")))
            return
        self.in_flight += 1
        try:
            answer = await self._answer(scope, protocol)
            protocol.response_bytes(*answer)
        except ProtocolClosed:  # the client went away meanwhile: nobody to answer
            pass
        finally:
            self.in_flight -= 1

    async def _answer(self, scope: Any, protocol: Any) -> Answer:
        # Each attribute of granian's scope is converted anew when read: read each once.
        headers = scope.headers
        method = scope.method
        length = headers.get("content-length")
        if length is not None:
            if int(length) > self.max_body:  # hyper has checked it is a number
                return self._too_large()
            body = await self._receive(protocol())
        elif method in NO_BODY and "transfer-encoding" not in headers:
            body = b""
        else:  # chunked: count as it comes
            body = await self._receive(self._chunks(protocol))
        if body is None:
            return self._too_large()
        if isinstance(body, tuple):
            return body
        environ = self._environ(scope, method, headers, body)
        if environ["PATH_INFO"].startswith(OFFLOADED):  # the path Flask routes by, decoded
            return await self.loop.run_in_executor(self.executor, self._call, environ)
        if self.held_context is not None:
            return self.held_context.run(self._call, environ)
        return self._call(environ)

    async def _receive(self, reading: Awaitable[bytes | None]) -> bytes | None | Answer:
        """The body, or a 408 answer once `body_timeout` has passed (to within SWEEP_EVERY)."""
        task = asyncio.current_task()
        self._deadlines[task] = self.loop.time() + self.body_timeout
        try:
            return await reading
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            return error_answer(
                408, f"the request body did not arrive within {self.body_timeout:g} seconds"
            )
        finally:
            self._deadlines.pop(task, None)

    def _sweep(self) -> None:
        """Cancel the body reads whose deadline has passed, then come back in SWEEP_EVERY."""
        now = self.loop.time()
        late = []
        for task, deadline in self._deadlines.items():  # in deadline order: stop at the first
            if deadline > now:
                break
            late.append(task)
        for task in late:
            del self._deadlines[task]
            self._expired.add(task)
            task.cancel()
        self.loop.call_later(SWEEP_EVERY, self._sweep)

    async def _chunks(self, protocol: Any) -> bytes | None:
        """A body without Content-Length, or None once it passes the limit."""
        received = bytearray()
        async for chunk in protocol:
            received += chunk
            if len(received) > self.max_body:
                return None
        return bytes(received)

    def _too_large(self) -> Answer:
        return error_answer(413, f"request body is larger than the limit of {self.max_body} bytes")

    def _environ(self, scope: Any, method: str, headers: Any, body: bytes) -> dict[str, Any]:
        path = scope.path
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        # The server's name, port, scheme and protocol: one entry per listening address.
        server = (scope.server, scope.http_version, scope.scheme)
        fixed = self._servers.get(server)
        if fixed is None:
            name, _, port = server[0].rpartition(":")
            fixed = self._servers[server] = {
                **self._base,
                "SERVER_NAME": name.strip("[]"),
                "SERVER_PORT": port,
                "SERVER_PROTOCOL": f"HTTP/{server[1]}",
                "wsgi.url_scheme": server[2],
            }
        client, _, client_port = scope.client.rpartition(":")
        environ = {
            **fixed,
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": scope.query_string,
            "REMOTE_ADDR": client.strip("[]"),
            "REMOTE_PORT": client_port,
            "wsgi.input": BytesIO(body),
        }
        if body or method not in NO_BODY:
            environ["CONTENT_LENGTH"] = str(len(body))  # the body as received, de-chunked
        keys = self._header_keys
        for name, value in headers.items():
            key = keys.get(name, "")
            if key == "":
                key = _environ_key(name)
                if len(keys) < 256:
                    keys[name] = key
            if key is None:
                continue
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        return environ

    def _call(self, environ: dict[str, Any]) -> Answer:
        """Run the WSGI app on one environ; any failure is a 500 without details."""
        started: list[Any] = []
        chunks: list[bytes] = []

        def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return chunks.append

        try:
            result = self.app(environ, start_response)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            status, headers = started
            return int(status[:3]), headers, b"".join(chunks)
        except Exception:
            log.exception("the app failed: %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"])
            return error_answer(500, "internal error")


def _environ_key(name: str) -> str | None:
    """The environ key of a header (None: not passed on, like gunicorn, for names with `_`,
    which could pass for the `-` spelling of another header)."""
    if name == "content-type":
        return "CONTENT_TYPE"
    if name in ("content-length", "transfer-encoding") or "_" in name:
        return None  # the length is the de-chunked body's, set by _environ
    return "HTTP_" + name.upper().replace("-", "_")
