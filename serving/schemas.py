"""The API's bodies as schema models: the request (one customer record, or a JSON array of them),
validated straight from the raw bytes, and every response and error, which serving.openapi turns
into the OpenAPI document.

pydantic-core parses and validates the bytes in one pass (no `json.loads` first). Types are strict:
a string, boolean, null or list is never coerced into a number. Errors are turned into one message
that names each field and what is wrong with it. A key that appears twice in an object is an error
too (JSON parsers keep the last value silently): a valid record has exactly one `:` per field, so
one count over the bytes tells, and only then is the body parsed again to name the key.
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal, NotRequired, Union

import pydantic_core
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError, WithJsonSchema, with_config
from typing_extensions import TypedDict

from pipelines.contract import CONTRACT, FEATURES, feature

# Beyond this, values are not plausible customer totals and float64 stops holding whole numbers.
MAX_MAGNITUDE = 1e15

Amount = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
# A whole number; 5.0 is accepted as 5 (JSON writers emit floats), 5.5 is not. Validated as a
# float with multiple_of=1 to stay in pydantic-core (no Python call per record in a batch).
Count = Annotated[
    float,
    Field(allow_inf_nan=False, ge=0, le=MAX_MAGNITUDE, multiple_of=1),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": int(MAX_MAGNITUDE)}),
]


# The field type for each JSON type of the feature contract.
_FIELD = {"number": Amount, "integer": Count}


def _record_type() -> type:
    """A TypedDict with a field per entry of the feature contract, in its order and JSON type."""
    fields = {
        f.name: Annotated[_FIELD[f.json_type], Field(description=f.description)] for f in CONTRACT
    }
    record = TypedDict("CustomerRecord", fields)  # type: ignore[misc]
    record.__doc__ = "One customer's features, the model's inputs (pipelines/contract.py)."
    return with_config(ConfigDict(extra="forbid", strict=True))(record)


CustomerRecord = _record_type()

assert tuple(CustomerRecord.__annotations__) == FEATURES

RECORD = TypeAdapter(CustomerRecord)


@functools.cache
def batch_type(max_batch: int) -> Any:
    """A batch: a JSON array of 1 to `max_batch` records."""
    return Annotated[list[CustomerRecord], Field(min_length=1, max_length=max_batch)]


@functools.cache
def batch_adapter(max_batch: int) -> TypeAdapter[list[CustomerRecord]]:
    return TypeAdapter(batch_type(max_batch))


@functools.cache
def predict_request(max_batch: int) -> Any:
    """The body of `POST /predict_cluster_<alias>`: one record, or a batch."""
    return Union[CustomerRecord, batch_type(max_batch)]  # noqa: UP007 (an Annotated member)


# The responses. Attribute docstrings become the fields' descriptions in the OpenAPI document.
DOCUMENTED = ConfigDict(use_attribute_docstrings=True)


@with_config(DOCUMENTED)
class Cluster(TypedDict):
    """The cluster of one record."""

    cluster: int
    """Index of the nearest cluster center, 0 to k - 1."""


@with_config(DOCUMENTED)
class Clusters(TypedDict):
    """The cluster of each record of a batch, in the batch's order."""

    clusters: list[int]


@with_config(DOCUMENTED)
class Error(TypedDict):
    """Every 4xx and 5xx answer."""

    error: str
    """What is wrong, naming the field, limit or endpoint concerned."""
    request_id: NotRequired[str]
    """On a 500: the id of the request in the log, where the traceback is."""


@with_config(DOCUMENTED)
class Health(TypedDict):
    status: Literal["ok"]


@with_config(DOCUMENTED)
class AliasState(TypedDict):
    """What an alias serves and, if its last refresh failed, why."""

    version: int | None
    """The registered version loaded, or null if none could be."""
    error: str | None


@with_config(DOCUMENTED)
class Ready(TypedDict):
    ready: Literal[True]
    models: dict[str, AliasState]


@with_config(DOCUMENTED)
class NotReady(TypedDict):
    error: str
    """Per alias without a model: why."""
    ready: Literal[False]
    models: dict[str, AliasState]


@with_config(DOCUMENTED)
class Centers(TypedDict):
    scaled: list[list[float]]
    """The KMeans centers, in the space the model computes distances in."""
    original_units: list[list[float]]
    """The same centers in the units of the request's fields."""


@with_config(DOCUMENTED)
class ModelInfo(TypedDict):
    """The version an alias serves and its training facts; only `version` and `error` when none
    is loaded."""

    version: int | None
    error: str | None
    """Why the last refresh of the alias failed; null when it succeeded."""
    run_id: NotRequired[str | None]
    window: NotRequired[int | str | None]
    """The stream window the model was trained on."""
    k: NotRequired[int]
    silhouette: NotRequired[float | None]
    features: NotRequired[list[str]]
    centers: NotRequired[Centers]
    loaded_at: NotRequired[float]
    """Unix time the worker loaded it."""


@with_config(DOCUMENTED)
class Models(TypedDict):
    model_name: str
    aliases: dict[str, ModelInfo]


@with_config(DOCUMENTED)
class Workers(TypedDict):
    reloaded: int
    """Live workers that refreshed since the reload was asked for."""
    pending: list[int]
    """PIDs of the workers that had not confirmed when the wait ended."""


@with_config(DOCUMENTED)
class Reloaded(TypedDict):
    models: dict[str, AliasState]
    workers: Workers


class BadRequest(ValueError):
    """The body is not a valid record or batch; the message says which field and why."""


def parse_body(body: bytes, max_batch: int) -> CustomerRecord | list[CustomerRecord]:
    """A single record (JSON object) or a batch (JSON array of objects), validated."""
    start = body.lstrip()[:1]
    if not start:
        raise BadRequest("empty body: send a JSON object, or a JSON array of objects")
    try:
        if start == b"[":
            parsed: Any = batch_adapter(max_batch).validate_json(body)
            fields = len(parsed) * len(FEATURES)
        elif start == b"{":
            parsed = RECORD.validate_json(body)
            fields = len(FEATURES)
        else:
            value = pydantic_core.from_json(body)
            raise BadRequest(
                f"body must be a JSON object, or a JSON array of objects; got {_json_type(value)}"
            )
    except ValidationError as exc:
        # A duplicate may be why (the last value won and is wrong): say so first.
        raise BadRequest(duplicate_key(body) or describe(exc, max_batch)) from None
    except BadRequest:
        raise
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    # Valid records hold feature names and numbers only: one `:` per member, none elsewhere.
    if body.count(b":") != fields:
        raise BadRequest(duplicate_key(body) or "a key appears twice")
    return parsed


class _Members(dict):
    """A JSON object that remembers the first key it saw twice."""

    duplicate: str | None = None


def _members(pairs: list[tuple[str, Any]]) -> _Members:
    obj = _Members()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def duplicate_key(body: bytes) -> str | None:
    """The error for the first record (the object, or an object of the array) that has a key
    twice, naming it: `[3].TotalAmount: duplicate key ...`; None when there is none."""
    try:
        value = json.loads(body, object_pairs_hook=_members)
    except (ValueError, RecursionError):
        return None
    records = value if isinstance(value, list) else [value]
    for index, record in enumerate(records):
        if isinstance(record, _Members) and record.duplicate is not None:
            where = f"[{index}].{record.duplicate}" if value is records else record.duplicate
            return f"{where}: duplicate key (each field may appear once)"
    return None


def describe(exc: ValidationError, max_batch: int, limit: int = 5) -> str:
    errors = exc.errors(include_url=False)
    messages = [_message(e, max_batch) for e in errors[:limit]]
    if len(errors) > limit:
        messages.append(f"and {len(errors) - limit} more errors")
    return "; ".join(messages)


def _message(error: Any, max_batch: int) -> str:
    kind, loc = error["type"], error["loc"]
    if kind == "json_invalid":
        return f"malformed JSON: {error['ctx']['error']}"
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    where = where or "body"
    got = _json_type(error.get("input"))
    match kind:
        case "missing":
            return f"{where}: field is required"
        case "extra_forbidden":
            return f"{where}: unknown field (expected {', '.join(FEATURES)})"
        case "finite_number":
            return f"{where}: must be a finite number, not NaN or Infinity"
        case "multiple_of":
            return f"{where}: must be a whole number, got {error['input']}"
        case "greater_than_equal" | "less_than_equal":
            return f"{where}: {error['msg'].lower()}, got {error['input']}"
        case "too_long":
            return f"{where}: a batch holds at most {max_batch} records"
        case "too_short":
            return f"{where}: a batch holds at least one record"
        case "float_type" | "float_parsing":
            whole = loc[-1] in FEATURES and feature(loc[-1]).json_type == "integer"
            expected = "a whole number" if whole else "a number"
            return f"{where}: must be {expected}, got {got}"
        case "model_type" | "dict_type":
            return f"{where}: must be a JSON object, got {got}"
        case "list_type":
            return f"{where}: must be a JSON array, got {got}"
        case _:
            return f"{where}: {error['msg']}, got {got}"


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    match value:
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case None:
            return "null"
        case list():
            return "array"
        case dict():
            return "object"
        case _:
            return type(value).__name__
