"""Flask without the per-request work this API never needs, through Flask's own extension points.

A prediction costs a few microseconds; plain Flask spends far more around it, and on a 2-core
machine that CPU is the server's throughput (bench/serve.py measures it). Three pieces of that
work give the same answer on every request of this API, so they are done once:

- binding the URL map to the request and matching the route (`create_url_adapter`, then the
  adapter's `match`): Werkzeug parses and validates the Host header and IDNA-encodes it for
  every request, then walks the routing state machine; together about a quarter of Flask's time.
  Both depend only on the request fields listed in `_ADAPTER_INPUTS` (routes cannot change once
  Flask has served a request), so the adapter and its match are kept per distinct combination
  of them (a bounded number; others are bound and matched as usual);
- opening a session: the API keeps none, and Flask would build a new empty `NullSession` for each
  request; one shared instance serves them all (it refuses writes, so sharing it is safe);
- `ensure_sync`: whether a view or hook is a coroutine function is looked up once per function.

Everything else (routing, hooks, error handlers, responses) is Flask's own, with one opening for
the hot path of an API: a *direct view* (`add_direct_view`) answers the requests Flask routes to
its endpoint straight from the WSGI environ, without request context, request and response
objects, when it can; when it returns None, Flask answers the request as usual. The direct view
of `POST /predict_cluster_<alias>` answers valid records and leaves every error to Flask (their
answers are Flask's by construction); that skips two thirds of a prediction's CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flask import Flask, Request
from flask.sessions import NullSession, SecureCookieSessionInterface, SessionMixin
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter, Rule

# The environ keys `Map.bind_to_environ` reads (host and port, scheme, upgrade, script, path,
# query string, method): equal values bind to an equal adapter.
_ADAPTER_INPUTS = (
    "HTTP_HOST",
    "SERVER_NAME",
    "SERVER_PORT",
    "wsgi.url_scheme",
    "HTTP_CONNECTION",
    "HTTP_UPGRADE",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "REQUEST_METHOD",
)
log = logging.getLogger(__name__)

# A WSGI answer: status line, headers, body.
WSGIAnswer = tuple[str, list[tuple[str, str]], bytes]
# Called as `view(environ, **view_args)`: the answer, or None to let Flask answer.
DirectView = Callable[..., WSGIAnswer | None]
# Request hooks a direct view would bypass: an endpoint they apply to is left to Flask.
_HOOKS = (
    "before_request_funcs",
    "after_request_funcs",
    "teardown_request_funcs",
    "url_value_preprocessors",
)

# Entries each cache keeps: the API has a handful of routes and hooks; a client probing many
# paths or hosts only stops new entries from being added, it is still answered.
MAX_CACHED = 256


class MatchOnce(MapAdapter):
    """An adapter bound to one path and method, which keeps the route it matched them to."""

    _matched: tuple[Rule, Mapping[str, Any]] | None = None

    def match(  # type: ignore[override]
        self,
        path_info: str | None = None,
        method: str | None = None,
        return_rule: bool = False,
        query_args: Mapping[str, Any] | str | None = None,
        websocket: bool | None = None,
    ) -> tuple[Any, Mapping[str, Any]]:
        """Flask's call (`match(return_rule=True)`, the bound path and method) is answered from
        the first successful match; a failure (404, 405, redirect) raises again each time."""
        if not return_rule or (path_info, method, query_args, websocket) != (None,) * 4:
            return super().match(path_info, method, return_rule, query_args, websocket)
        if self._matched is None:
            self._matched = super().match(return_rule=True)
        rule, arguments = self._matched
        return rule, dict(arguments)  # a view or preprocessor may change its own copy


class NoSessions(SecureCookieSessionInterface):
    """Every request gets the same null session; none is ever saved."""

    def __init__(self) -> None:
        self.null_session = NullSession()

    def open_session(self, app: Flask, request: Request) -> SessionMixin | None:
        return self.null_session


class LeanFlask(Flask):
    """Flask with the URL adapter and its match, the null session and `ensure_sync` computed
    once, and direct views."""

    session_interface = NoSessions()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._adapters: dict[tuple, tuple[MapAdapter, str]] = {}
        self._sync: dict[Callable, Callable] = {}
        self._direct_views: dict[str, DirectView] = {}
        # (method, path) -> direct view and its view arguments; made at the first request.
        self._direct: dict[tuple[str, str], tuple[DirectView, dict[str, Any]]] | None = None

    def add_direct_view(self, endpoint: str, view: DirectView) -> None:
        """Let `view(environ, **view_args)` answer the requests routed to `endpoint` (a rule
        without variables), outside any request context, as a WSGI answer. Where it returns
        None, Flask answers as usual: the view must then leave `environ` as it found it (the body
        readable again). Where the routing depends on the host or request hooks apply to the
        endpoint, Flask answers every request (the view would bypass them)."""
        self._check_setup_finished("add_direct_view")
        self._direct_views[endpoint] = view

    def wsgi_app(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        direct = self._direct
        if direct is None:
            direct = self._direct = self._direct_routes()
        found = direct.get((environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")))
        if found is not None:
            view, arguments = found
            answer = view(environ, **arguments)
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return super().wsgi_app(environ, start_response)

    def _direct_routes(self) -> dict[tuple[str, str], tuple[DirectView, dict[str, Any]]]:
        """Each method and path that Werkzeug routes to an endpoint with a direct view."""
        if not self._direct_views:
            return {}
        url_map = self.url_map
        if url_map.host_matching or self.subdomain_matching or self.config["SERVER_NAME"]:
            log.warning("direct views are off: routing depends on the host")
            return {}
        if self.config["TRUSTED_HOSTS"] is not None:
            log.warning("direct views are off: TRUSTED_HOSTS is checked per request")
            return {}
        adapter = url_map.bind("localhost")
        routes = {}
        for rule in url_map.iter_rules():
            view = self._direct_views.get(rule.endpoint)
            if view is None:
                continue
            if "<" in rule.rule or self._hooked(rule.endpoint):
                log.warning("no direct view for %s: variables or request hooks", rule.endpoint)
                continue
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                try:
                    endpoint, arguments = adapter.match(rule.rule, method)
                except HTTPException:  # another rule's redirect, say: Flask answers
                    continue
                if endpoint == rule.endpoint:
                    routes[(method, rule.rule)] = (view, dict(arguments))
        return routes

    def _hooked(self, endpoint: str) -> bool:
        """Whether request hooks of the app or of the endpoint's blueprints apply to it."""
        names = endpoint.split(".")[:-1]
        scopes = [None, *(".".join(names[: i + 1]) for i in range(len(names)))]
        return any(getattr(self, hooks).get(scope) for hooks in _HOOKS for scope in scopes)

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        """Flask's adapter for this request, bound once per distinct `_ADAPTER_INPUTS`."""
        if request is None or self.config["TRUSTED_HOSTS"] is not None:
            return super().create_url_adapter(request)  # trusted hosts: checked per request
        environ = request.environ
        key = tuple(map(environ.get, _ADAPTER_INPUTS))
        known = self._adapters.get(key)
        if known is not None:
            adapter, request.host = known
            return adapter
        adapter = super().create_url_adapter(request)  # also sets request.host
        if adapter is None or len(self._adapters) >= MAX_CACHED:
            return adapter
        adapter = MatchOnce(
            adapter.map,
            adapter.server_name,
            adapter.script_name,
            adapter.subdomain,
            adapter.url_scheme,
            adapter.path_info,
            adapter.default_method,
            adapter.query_args,
        )
        self._adapters[key] = (adapter, request.host)
        return adapter

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func)
        if sync is None:
            sync = super().ensure_sync(func)
            if len(self._sync) < MAX_CACHED:
                self._sync[func] = sync
        return sync
