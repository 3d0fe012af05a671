"""Property-based fuzzing of request bodies: whatever arrives, the answer is never a 5xx, and
every 4xx says what is wrong in `{"error": ...}`."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.data.schema import FEATURES
from serving.app import create_app
from serving.settings import ServingSettings

pytestmark = pytest.mark.spark

# No example database: it would be written into the working directory.
FUZZ = {"deadline": None, "database": None, "suppress_health_check": [HealthCheck.too_slow]}
PATHS = ["/predict_cluster_model1", "/predict_cluster_model2", "/predict_cluster_model3"]

numbers = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 1e15, -1e15, 1e15 + 1, 5e-324, 1.7976931348623157e308, 2**63]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.one_of(st.sampled_from(FEATURES), st.text(max_size=15))
records = st.dictionaries(field_names, json_values, max_size=5) | st.fixed_dictionaries(
    {name: numbers for name in FEATURES}
)
documents = st.one_of(
    json_values, records, st.lists(records, max_size=5), st.lists(json_values, max_size=3)
)


def encode(document: object) -> bytes:
    # allow_nan writes NaN / Infinity literals, which some JSON writers emit.
    return json.dumps(document, allow_nan=True).encode()


bodies = st.one_of(
    documents.map(encode),
    st.binary(max_size=200),
    documents.map(encode).flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i])),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "application/xml"]
)


@pytest.fixture(scope="module")
def app(store: str, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    log_file = tmp_path_factory.mktemp("fuzz-logs") / "serving.log"
    app = create_app(ServingSettings(tracking_uri=store, log_file=log_file), poll=False)
    app.extensions["serving.registry"].refresh()
    return app


@settings(max_examples=400, **FUZZ)
@given(body=bodies, content_type=content_types, path=st.sampled_from(PATHS))
def test_no_body_makes_a_5xx(app: Flask, body: bytes, content_type: str, path: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = app.test_client().post(path, data=body, headers=headers)
    assert response.status_code < 500, response.get_data(as_text=True)
    payload = response.get_json()
    if response.status_code == 200:
        assert set(payload) in ({"cluster"}, {"clusters"})
    else:
        assert response.status_code in (400, 413, 415)
        assert isinstance(payload["error"], str) and payload["error"]


@settings(max_examples=200, **FUZZ)
@given(
    quantity=st.floats(-1e15, 1e15),
    amount=st.floats(-1e15, 1e15),
    invoices=st.integers(0, 10**15),
)
def test_every_valid_record_gets_a_cluster(
    app: Flask, quantity: float, amount: float, invoices: int
) -> None:
    record = {"TotalQuantity": quantity, "TotalAmount": amount, "NumInvoices": invoices}
    response = app.test_client().post(PATHS[0], json=record)
    assert response.status_code == 200
    model = app.extensions["serving.registry"].slot("model1").model.model
    assert response.get_json()["cluster"] in range(model.k)
