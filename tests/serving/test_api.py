"""The HTTP contract through Flask's test client: the seed's request, batches, the ops endpoints,
and a 4xx naming the field and the problem for every kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import Client

from serving.app import create_app
from serving.lean_flask import LeanFlask
from serving.predictor import NearestCenter
from serving.responses import cluster_body, json_body
from serving.settings import ServingSettings
from tests.serving_fixtures import free_port

if TYPE_CHECKING:
    from tests.conftest import Training

pytestmark = pytest.mark.spark

SEED = {"TotalQuantity": 100, "TotalAmount": 2000.0, "NumInvoices": 5}
SEED_PATH = "/predict_cluster_model1"


def make_app(tracking_uri: str, log_dir: Path, **overrides) -> Flask:
    settings = ServingSettings(
        tracking_uri=tracking_uri, log_file=log_dir / "serving.log", **overrides
    )
    app = create_app(settings, poll=False)
    app.extensions["serving.registry"].refresh()
    return app


@pytest.fixture(scope="module")
def app(store: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(store, tmp_path_factory.mktemp("logs"), max_batch=100)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def post(client: FlaskClient, body: bytes | str, path: str = SEED_PATH, **kwargs):
    kwargs.setdefault("content_type", "application/json")
    return client.post(path, data=body, **kwargs)


def test_the_single_record_answer_is_the_seeds_json() -> None:
    for cluster in (0, 1, 9, 31):
        assert cluster_body(cluster) == json_body({"cluster": cluster})


def test_seed_request_gets_a_cluster(client: FlaskClient, app: Flask) -> None:
    response = client.post(SEED_PATH, json=SEED)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert list(body) == ["cluster"] and isinstance(body["cluster"], int)
    model = app.extensions["serving.registry"].slot("model1").model
    assert 0 <= body["cluster"] < model.model.k
    assert response.headers["X-Model-Version"] == str(model.version)


@pytest.mark.parametrize("alias", ["model1", "model2", "model3"])
def test_each_alias_serves_its_own_version(client: FlaskClient, alias: str) -> None:
    response = client.post(f"/predict_cluster_{alias}", json=SEED)
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == alias[-1]  # fresh store: version i = model i


def test_batch_matches_single_requests(client: FlaskClient) -> None:
    records = [
        {"TotalQuantity": q, "TotalAmount": a, "NumInvoices": n}
        for q, a, n in [(1, 10.0, 1), (100, 2000.0, 5), (5000, 90000.5, 40), (-3, -12.5, 0)]
    ]
    response = client.post("/predict_cluster_model3", json=records)
    assert response.status_code == 200
    singles = [client.post("/predict_cluster_model3", json=r).json["cluster"] for r in records]
    assert response.get_json() == {"clusters": singles}


def test_whole_float_invoice_count_is_accepted(client: FlaskClient) -> None:
    as_int = client.post(SEED_PATH, json=SEED).get_json()
    as_float = client.post(SEED_PATH, json=SEED | {"NumInvoices": 5.0}).get_json()
    assert as_int == as_float


def test_models_reports_version_run_window_k_silhouette_centers(
    client: FlaskClient, trained_store: Training
) -> None:
    body = client.get("/models").get_json()
    assert body["model_name"] == "customer-segmentation"
    assert list(body["aliases"]) == [t.alias for t in trained_store.trained]
    for t, info in zip(trained_store.trained, body["aliases"].values(), strict=True):
        assert info["version"] == t.version and info["window"] == t.window
        assert info["error"] is None and info["run_id"] == t.run_id
        assert info["k"] == t.k and info["silhouette"] == pytest.approx(t.silhouette)
        assert info["features"] == ["TotalQuantity", "TotalAmount", "NumInvoices"]
        for space in ("scaled", "original_units"):
            assert len(info["centers"][space]) == info["k"]
            assert all(len(center) == 3 for center in info["centers"][space])


def test_health_and_ready(client: FlaskClient) -> None:
    assert client.get("/health").get_json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


def metric(client: FlaskClient, name: str, **labels: str) -> float:
    """A sample's value in GET /metrics (0 if absent). The metrics are process-wide: every app
    the session makes counts into them, so tests compare before and after."""
    text = client.get("/metrics").get_data(as_text=True)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_metrics_count_requests_per_model_and_versions(
    store: str, trained_store: Training, tmp_path: Path
) -> None:
    # A new app: loading its models sets the version gauges, whatever other apps set before.
    client = make_app(store, tmp_path).test_client()
    endpoint = "/predict_cluster_model2"
    posts = {"name": "serving_requests_total", "endpoint": endpoint, "method": "POST"}
    counted = {
        "ok": posts | {"status": "200"},
        "bad": posts | {"status": "400"},
        "timed": {"name": "serving_request_duration_seconds_count", "endpoint": endpoint},
        "rows": {"name": "serving_predicted_rows_total", "alias": "model2"},
    }
    before = {key: metric(client, **labels) for key, labels in counted.items()}

    client.post(endpoint, json=SEED)
    client.post(endpoint, json=[SEED] * 3)
    client.post(endpoint, json={})

    after = {key: metric(client, **labels) for key, labels in counted.items()}
    assert {key: after[key] - before[key] for key in counted} == {
        "ok": 2,
        "bad": 1,
        "timed": 3,
        "rows": 4,
    }
    for t in trained_store.trained:
        assert metric(client, "serving_model_version", alias=t.alias) == t.version
        assert metric(client, "serving_model_loaded", alias=t.alias) == 1


def test_openapi_document(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {
        "/predict_cluster_model1",
        "/predict_cluster_model2",
        "/predict_cluster_model3",
        "/models",
        "/health",
        "/ready",
        "/metrics",
        "/openapi.json",
        "/admin/reload",
    }
    schemas = doc["components"]["schemas"]
    record = schemas["CustomerRecord"]
    assert record["required"] == ["TotalQuantity", "TotalAmount", "NumInvoices"]
    assert record["properties"]["NumInvoices"]["type"] == "integer"
    assert schemas["Error"]["required"] == ["error"]
    predict = doc["paths"]["/predict_cluster_model1"]["post"]
    batch = predict["requestBody"]["content"]["application/json"]["schema"]["anyOf"][1]
    assert batch["maxItems"] == 100  # the app's SERVING_MAX_BATCH
    error = {"$ref": "#/components/schemas/Error"}
    for status in ("400", "408", "413", "415", "500", "503"):
        assert predict["responses"][status]["content"]["application/json"]["schema"] == error
    reload = doc["paths"]["/admin/reload"]["post"]["responses"]
    assert {"200", "202", "401", "403", "503"} <= set(reload)


def test_answers_match_the_documented_models(client: FlaskClient) -> None:
    """Every documented answer validates against the model the document names for it."""
    doc = client.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    answers = [
        ("post", SEED_PATH, {"json": SEED}),
        ("post", SEED_PATH, {"json": [SEED, SEED]}),
        ("post", SEED_PATH, {"data": "{", "content_type": "application/json"}),
        ("post", SEED_PATH, {"data": "{}", "content_type": "text/plain"}),
        ("get", "/models", {}),
        ("get", "/health", {}),
        ("get", "/ready", {}),
        ("post", "/admin/reload", {}),
        ("post", "/admin/reload", {"environ_base": {"REMOTE_ADDR": "10.0.0.5"}}),
    ]
    for method, path, kwargs in answers:
        response = getattr(client, method)(path, **kwargs)
        declared = doc["paths"][path][method]["responses"][str(response.status_code)]
        schema = declared["content"]["application/json"]["schema"]
        _check(response.get_json(), schema, schemas, f"{method} {path}")


def _check(value: object, schema: dict, schemas: dict, where: str) -> None:
    """A small JSON Schema check: enough for the shapes schemas.py declares."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:
        failures = []
        for option in schema["anyOf"]:
            try:
                _check(value, option, schemas, where)
                return
            except AssertionError as exc:
                failures.append(str(exc))
        raise AssertionError(f"{where}: {value!r} matches no option: {failures}")
    kind = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if kind in ("integer", "number"):
        ok = isinstance(value, int if kind == "integer" else int | float)
        assert ok and not isinstance(value, bool), f"{where}: {value!r} is not {kind}"
    elif kind is not None:
        assert isinstance(value, types[kind]), f"{where}: {value!r} is not {kind}"
    if "const" in schema:
        assert value == schema["const"], where
    if kind == "object":
        assert set(schema.get("required", [])) <= set(value), f"{where}: missing in {value}"
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], schemas, f"{where}.{key}")
            elif isinstance(extra, dict):
                _check(item, extra, schemas, f"{where}.{key}")
            else:
                assert extra is not False, f"{where}: unexpected {key}"
    if kind == "array":
        for i, item in enumerate(value):
            _check(item, schema.get("items", {}), schemas, f"{where}[{i}]")


BAD_BODIES = [
    # (body, expected status, words the error must contain)
    ('{"TotalQuantity": 100, "TotalAmount": 2000.0', 400, ["malformed JSON"]),
    ("", 400, ["empty body"]),
    ("   ", 400, ["empty body"]),
    ('{"TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["TotalQuantity", "required"]),
    ('{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 5, "Age": 3}', 400, ["Age", "unknown"]),
    ('{"TotalQuantity": "100", "TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["TotalQuantity"]),
    ('{"TotalQuantity": true, "TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["boolean"]),
    ('{"TotalQuantity": null, "TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["null"]),
    ('{"TotalQuantity": [1], "TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["array"]),
    ('{"TotalQuantity": 1, "TotalAmount": {}, "NumInvoices": 5}', 400, ["TotalAmount", "object"]),
    ('{"TotalQuantity": NaN, "TotalAmount": 2000.0, "NumInvoices": 5}', 400, ["finite"]),
    ('{"TotalQuantity": 1, "TotalAmount": Infinity, "NumInvoices": 5}', 400, ["TotalAmount"]),
    ('{"TotalQuantity": 1, "TotalAmount": -Infinity, "NumInvoices": 5}', 400, ["finite"]),
    ('{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 5.5}', 400, ["NumInvoices", "whole"]),
    ('{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": -1}', 400, ["NumInvoices", "greater"]),
    ('{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": "5"}', 400, ["NumInvoices", "string"]),
    ('{"TotalQuantity": 1e16, "TotalAmount": 2, "NumInvoices": 5}', 400, ["TotalQuantity", "less"]),
    ('{"TotalQuantity": 1, "TotalAmount": 1e999, "NumInvoices": 5}', 400, ["TotalAmount"]),
    ('{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 1e20}', 400, ["NumInvoices"]),
    ("[]", 400, ["at least one"]),
    ("[1, 2]", 400, ["[0]", "object"]),
    ('[{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 3}, {}]', 400, ["[1].TotalQuantity"]),
    ("42", 400, ["JSON object"]),
    ("null", 400, ["JSON object"]),
    ("\xff", 400, ["malformed JSON"]),
    # A key twice: JSON parsers keep the last value, silently; this API refuses it.
    (
        '{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 5, "TotalAmount": 3}',
        400,
        ["TotalAmount", "duplicate"],
    ),
    (
        '{"TotalQuantity": 1, "TotalQuantity": "x", "TotalAmount": 2, "NumInvoices": 5}',
        400,
        ["TotalQuantity", "duplicate"],
    ),
    (
        '{"TotalQuantity": 1, "Total\\u0051uantity": 1, "TotalAmount": 2, "NumInvoices": 5}',
        400,
        ["TotalQuantity", "duplicate"],
    ),
    (
        '[{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 3}, '
        '{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 3, "NumInvoices": 4}]',
        400,
        ["[1].NumInvoices", "duplicate"],
    ),
    (
        '{"TotalQuantity": 1, "TotalAmount": 2, "NumInvoices": 5, "x": 1, "x": 2}',
        400,
        ["x", "duplicate"],
    ),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_BODIES)
def test_bad_bodies_get_a_4xx_naming_the_problem(
    client: FlaskClient, body: str, status: int, words: list[str]
) -> None:
    response = post(client, body)
    assert response.status_code == status
    error = response.get_json()["error"]
    assert all(word in error for word in words), error


def test_batch_over_the_limit(client: FlaskClient) -> None:
    response = client.post(SEED_PATH, json=[SEED] * 101)
    assert response.status_code == 400
    assert "at most 100" in response.get_json()["error"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(client: FlaskClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(SEED_PATH, data=json.dumps(SEED), headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.get_json()["error"]


def test_content_type_with_charset_is_fine(client: FlaskClient) -> None:
    response = post(client, json.dumps(SEED), content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_body_over_the_size_limit_is_413(client: FlaskClient) -> None:
    response = post(client, b" " * (1024 * 1024 + 1))
    assert response.status_code == 413
    assert "1048576" in response.get_json()["error"]


def test_unknown_path_and_method(client: FlaskClient) -> None:
    missing = client.post("/predict_cluster_model4", json=SEED)
    assert missing.status_code == 404
    assert "/predict_cluster_model4" in missing.get_json()["error"]
    wrong = client.get(SEED_PATH)
    assert wrong.status_code == 405
    assert "POST" in wrong.get_json()["error"] and "POST" in wrong.headers["Allow"]
    assert client.delete("/models").status_code == 405


def test_unexpected_failure_is_500_with_request_id_and_traceback_only_in_log(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(store, tmp_path)

    def broken(self, point):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(NearestCenter, "predict_one", broken)
    response = app.test_client().post(SEED_PATH, json=SEED, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error", "request_id": "req-42"}
    assert "secret" not in response.get_data(as_text=True)
    log = (tmp_path / "serving.log").read_text()
    assert "req-42" in log and "Traceback" in log and "RuntimeError: secret detail" in log


def test_access_log_line_per_request_with_latency(store: str, tmp_path: Path) -> None:
    client = make_app(store, tmp_path).test_client()
    client.post(SEED_PATH, json=SEED, headers={"X-Request-ID": "abc"})
    client.get("/nowhere")
    lines = (tmp_path / "serving.log").read_text().splitlines()
    access = [line for line in lines if "serving.access" in line]
    assert any(f'"POST {SEED_PATH}" 200' in line and "ms id=abc" in line for line in access)
    assert any('"GET /nowhere" 404' in line for line in access)


@pytest.mark.parametrize("client_address", ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"])
def test_admin_without_a_token_answers_loopback_clients(
    client: FlaskClient, client_address: str
) -> None:
    response = client.post("/admin/reload", environ_base={"REMOTE_ADDR": client_address})
    assert response.status_code == 200
    assert response.get_json()["workers"] == {"reloaded": 1, "pending": []}


@pytest.mark.parametrize("client_address", ["10.0.0.5", "192.168.1.20", "2001:db8::1", ""])
def test_admin_without_a_token_refuses_other_clients(
    client: FlaskClient, client_address: str
) -> None:
    response = client.post("/admin/reload", environ_base={"REMOTE_ADDR": client_address})
    assert response.status_code == 403
    error = response.get_json()["error"]
    assert "loopback" in error and "SERVING_ADMIN_TOKEN" in error
    # The other endpoints answer anyone.
    other = client.post(SEED_PATH, json=SEED, environ_base={"REMOTE_ADDR": client_address})
    assert other.status_code == 200


def test_admin_reload_requires_the_token_when_set(store: str, tmp_path: Path) -> None:
    client = make_app(store, tmp_path, admin_token="s3cret").test_client()
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    ok = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    remote = client.post(
        "/admin/reload",
        headers={"Authorization": "Bearer s3cret"},
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
    )
    assert remote.status_code == 200  # with a token, the token decides, not the address
    assert ok.get_json()["models"]["model2"] == {"version": 2, "error": None}
    assert ok.get_json()["workers"] == {"reloaded": 1, "pending": []}


def test_registry_unreachable_answers_503_with_the_reason(tmp_path: Path) -> None:
    app = make_app(f"http://127.0.0.1:{free_port()}", tmp_path)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    ready = client.get("/ready")
    assert ready.status_code == 503
    assert "model1" in ready.get_json()["error"] and "resolve" in ready.get_json()["error"]
    response = client.post(SEED_PATH, json=SEED)
    assert response.status_code == 503
    assert "model1 is not available" in response.get_json()["error"]
    # Validation still comes first: a bad body is the client's problem, whatever the registry.
    assert post(client, "{").status_code == 400


# Requests for the direct view of the predict endpoints (serving.lean_flask): what Flask's view
# answers, and which of them the direct view answers itself.
DIRECT_CASES = [
    # (path, body, content type, answered directly)
    (SEED_PATH, json.dumps(SEED), "application/json", True),
    (
        "/predict_cluster_model3",
        '{"TotalQuantity": -3, "TotalAmount": -12.5, "NumInvoices": 0.0}',
        "application/json",
        True,
    ),
    (SEED_PATH, json.dumps([SEED, {**SEED, "TotalAmount": 1e9}]), "application/json", True),
    (SEED_PATH, json.dumps(SEED), "application/json; charset=utf-8", False),
    (SEED_PATH, json.dumps(SEED), "text/plain", False),
    (SEED_PATH, json.dumps(SEED), None, False),
    (SEED_PATH, " " * (1024 * 1024 + 1), "application/json", False),
    ("/predict_cluster_missing", json.dumps(SEED), "application/json", False),
    *[(SEED_PATH, body, "application/json", False) for body, _, _ in BAD_BODIES],
]


def test_the_direct_view_answers_as_the_flask_view(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status, headers and body, byte for byte, on valid and invalid requests; the direct view
    answers the valid ones without Flask's dispatch and leaves all others to it."""
    app = make_app(store, tmp_path, aliases=("model1", "model3", "missing"), max_batch=100)
    dispatched: list[str] = []
    dispatch = Flask.full_dispatch_request
    monkeypatch.setattr(
        Flask, "full_dispatch_request", lambda self: dispatched.append("") or dispatch(self)
    )
    direct = Client(lambda environ, start: LeanFlask.wsgi_app(app, environ, start))
    flask = Client(lambda environ, start: Flask.wsgi_app(app, environ, start))
    for path, body, content_type, answered_directly in DIRECT_CASES:
        headers = {"Content-Type": content_type} if content_type else {}
        expected = flask.post(path, data=body, headers=headers)
        dispatched.clear()
        got = direct.post(path, data=body, headers=headers)
        case = f"{path} {content_type} {body[:80]!r}"
        assert got.status == expected.status, case
        assert got.headers.to_wsgi_list() == expected.headers.to_wsgi_list(), case
        assert got.get_data() == expected.get_data(), case
        assert (not dispatched) == answered_directly, case
    assert expected.status_code == 400  # the list ends with bad bodies: both paths saw them
