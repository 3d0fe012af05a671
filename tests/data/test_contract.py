"""The feature contract is the one definition: the signature, the request schema, the model
description and FEATURES are all read off it. No Spark, no server."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipelines.contract import CONTRACT, EXAMPLE_RECORD, FEATURES, feature, spoken_list
from pipelines.data import schema
from pipelines.training.registry import MODEL_DESCRIPTION
from pipelines.training.tracking import SIGNATURE
from serving.schemas import RECORD, BadRequest, parse_body


def test_the_seed_features_and_example() -> None:
    assert FEATURES == ("TotalQuantity", "TotalAmount", "NumInvoices")
    assert EXAMPLE_RECORD == {"TotalQuantity": 100, "TotalAmount": 2000.0, "NumInvoices": 5}
    assert schema.FEATURES is FEATURES
    assert feature("NumInvoices").json_type == "integer"
    with pytest.raises(KeyError, match="TotalQuantity, TotalAmount, NumInvoices"):
        feature("Age")


def test_contract_module_needs_no_spark() -> None:
    code = "import sys, pipelines.contract; print('pyspark' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_signature_is_the_contract() -> None:
    inputs = SIGNATURE.inputs.to_dict()
    assert [(c["name"], c["type"]) for c in inputs] == [(f.name, f.spark_type) for f in CONTRACT]


def test_request_schema_is_the_contract() -> None:
    record = RECORD.json_schema()
    assert record["required"] == list(FEATURES)
    assert list(record["properties"]) == list(FEATURES)
    for f in CONTRACT:
        field = record["properties"][f.name]
        assert (field["type"], field["description"]) == (f.json_type, f.description)
    assert record["additionalProperties"] is False


def test_example_record_is_a_valid_request() -> None:
    assert parse_body(json.dumps(EXAMPLE_RECORD).encode(), max_batch=10) == EXAMPLE_RECORD
    assert (
        parse_body(json.dumps([EXAMPLE_RECORD] * 2).encode(), max_batch=10) == [EXAMPLE_RECORD] * 2
    )


@pytest.mark.parametrize("f", CONTRACT, ids=lambda f: f.name)
def test_whole_number_message_follows_the_json_type(f) -> None:
    body = json.dumps({**EXAMPLE_RECORD, f.name: "5"}).encode()
    with pytest.raises(BadRequest) as error:
        parse_body(body, max_batch=10)
    expected = "a whole number" if f.json_type == "integer" else "a number"
    assert f"{f.name}: must be {expected}, got string" == str(error.value)


def test_model_description_names_the_features() -> None:
    assert spoken_list() == "TotalQuantity, TotalAmount and NumInvoices"
    assert f"over {spoken_list()} per customer" in MODEL_DESCRIPTION
