"""LeanFlask answers exactly as Flask does while binding, matching and opening sessions once:
the host of each request, fresh view arguments, 404 and 405 every time, a bounded cache."""

from __future__ import annotations

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
