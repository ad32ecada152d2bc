"""JSON encoding of the shared dataclasses for NATS payloads (Temporal has its own converter)."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from pydantic import TypeAdapter

T = TypeVar("T")


@cache
def _adapter(cls: Any) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def encode(value: Any) -> bytes:
    return _adapter(type(value)).dump_json(value)


def decode(cls: type[T], data: bytes) -> T:
    return _adapter(cls).validate_json(data)


def to_jsonable(value: Any) -> Any:
    return _adapter(type(value)).dump_python(value, mode="json")
