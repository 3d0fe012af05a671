"""Request validation: one customer record, or a JSON array of them, straight from the raw body.

pydantic-core parses and validates the bytes in one pass (no `json.loads` first). Types are strict:
a string, boolean, null or list is never coerced into a number. Errors are turned into one message
that names each field and what is wrong with it.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

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
def batch_adapter(max_batch: int) -> TypeAdapter[list[CustomerRecord]]:
    return TypeAdapter(Annotated[list[CustomerRecord], Field(min_length=1, max_length=max_batch)])


class BadRequest(ValueError):
    """The body is not a valid record or batch; the message says which field and why."""


def parse_body(body: bytes, max_batch: int) -> CustomerRecord | list[CustomerRecord]:
    """A single record (JSON object) or a batch (JSON array of objects), validated."""
    start = body.lstrip()[:1]
    if not start:
        raise BadRequest("empty body: send a JSON object, or a JSON array of objects")
    try:
        if start == b"[":
            return batch_adapter(max_batch).validate_json(body)
        if start == b"{":
            return RECORD.validate_json(body)
        value = pydantic_core.from_json(body)
    except ValidationError as exc:
        raise BadRequest(describe(exc, max_batch)) from None
    except ValueError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    raise BadRequest(
        f"body must be a JSON object, or a JSON array of objects; got {_json_type(value)}"
    )


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
