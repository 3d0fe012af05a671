"""LeanFlask answers exactly as Flask does while binding, matching and opening sessions once:
the host of each request, fresh view arguments, 404 and 405 every time, a bounded cache. A direct
view answers only its endpoint's requests, only where no request hook applies, and leaves to
Flask what it does not answer."""

from __future__ import annotations

from io import BytesIO

import pytest
from flask import Flask, request, session

from serving.lean_flask import MAX_CACHED, LeanFlask


def make_app(cls: type[Flask]) -> Flask:
    app = cls(__name__)

    @app.get("/items/<int:item>")
    def item(item: int) -> dict:
        return {"item": item, "host": request.host, "args": dict(request.args)}

    @app.post("/fixed", defaults={"alias": "model1"})
    def fixed(alias: str) -> dict:
        seen = dict(request.view_args)
        request.view_args["alias"] = "changed"  # a view may change its own copy
        return {"alias": alias, "seen": seen}

    @app.get("/session")
    def read_session() -> dict:
        return {"empty": not session}

    @app.get("/session/write")
    def write_session() -> str:
        session["user"] = "x"
        return "written"

    return app


REQUESTS = [
    ("GET", "/items/3", {"Host": "a.example:8080"}),
    ("GET", "/items/3", {"Host": "b.example"}),
    ("GET", "/items/3?x=1", {"Host": "a.example:8080"}),
    ("GET", "/items/nope", {}),
    ("PUT", "/items/3", {}),
    ("POST", "/fixed", {}),
    ("GET", "/nowhere", {}),
    ("GET", "/session", {}),
]


@pytest.mark.parametrize("method,path,headers", REQUESTS)
def test_same_answers_as_flask_every_time(method: str, path: str, headers: dict) -> None:
    plain, lean = make_app(Flask).test_client(), make_app(LeanFlask).test_client()
    expected = plain.open(path, method=method, headers=headers)
    for _ in range(3):  # the first request fills the caches, the next ones use them
        got = lean.open(path, method=method, headers=headers)
        assert (got.status_code, got.get_data()) == (expected.status_code, expected.get_data())
        assert got.headers.get("Allow") == expected.headers.get("Allow")


def test_each_request_sees_its_own_host() -> None:
    client = make_app(LeanFlask).test_client()
    for host in ("a.example", "b.example:81", "a.example"):
        assert client.get("/items/1", headers={"Host": host}).get_json()["host"] == host


def test_the_shared_null_session_refuses_writes() -> None:
    client = make_app(LeanFlask).test_client()
    assert client.get("/session").get_json() == {"empty": True}
    assert client.get("/session/write").status_code == 500  # Flask: no secret key, no session
    assert client.get("/session").get_json() == {"empty": True}


def test_the_caches_stop_growing_and_requests_still_answer() -> None:
    app = make_app(LeanFlask)
    client = app.test_client()
    for i in range(MAX_CACHED + 20):
        response = client.get(f"/items/{i}")
        assert response.get_json()["item"] == i
    assert len(app._adapters) == MAX_CACHED


def direct_app(answer_when: str) -> tuple[LeanFlask, list[str]]:
    """An app whose POST /fixed has a direct view answering bodies equal to `answer_when`."""
    app = make_app(LeanFlask)
    calls: list[str] = []

    def fixed(environ: dict, alias: str) -> tuple | None:
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        calls.append(alias)
        if body != answer_when.encode():
            environ["wsgi.input"] = BytesIO(body)
            return None
        return "200 OK", [("Content-Type", "text/plain")], b"direct " + body

    app.add_direct_view("fixed", fixed)
    return app, calls


def test_a_direct_view_answers_or_leaves_the_request_to_flask() -> None:
    app, calls = direct_app("mine")
    client = app.test_client()
    direct = client.post("/fixed", data="mine")
    assert (direct.status_code, direct.get_data()) == (200, b"direct mine")
    flask = client.post("/fixed", data="yours")  # the view saw it, then Flask answered
    assert flask.get_json() == {"alias": "model1", "seen": {"alias": "model1"}}
    assert calls == ["model1", "model1"]
    assert client.get("/fixed").status_code == 405  # only the rule's methods: Flask's 405
    assert client.post("/fixed/", data="mine").status_code == 404  # only the rule's path
    assert calls == ["model1", "model1"]


def test_a_direct_answer_skips_flask_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = direct_app("mine")

    def dispatch(self: Flask) -> None:
        raise AssertionError("Flask dispatched a request the direct view answered")

    monkeypatch.setattr(Flask, "full_dispatch_request", dispatch)
    assert app.test_client().post("/fixed", data="mine").get_data() == b"direct mine"


@pytest.mark.parametrize("hook", ["before_request", "after_request", "teardown_request"])
def test_no_direct_view_where_request_hooks_apply(hook: str) -> None:
    app, calls = direct_app("mine")
    seen: list[str] = []
    getattr(app, hook)(lambda *args: seen.append(hook) or (args[0] if args else None))
    response = app.test_client().post("/fixed", data="mine")
    assert response.get_json()["alias"] == "model1"  # Flask's view, with its hook
    assert seen == [hook] and calls == []


def test_no_direct_view_when_routing_depends_on_the_host() -> None:
    app, calls = direct_app("mine")
    app.config["SERVER_NAME"] = "a.example"
    assert app.test_client().post("/fixed", data="mine").get_json()["alias"] == "model1"
    assert calls == []
