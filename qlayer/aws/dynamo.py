"""What the DynamoDB adapters share: a table behind an injected client, typed values."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any


def to_python(value: Any) -> Any:
    """DynamoDB's Decimals and sets as plain Python (ints, floats, sorted lists)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(to_python(v) for v in value)
    return value


def to_dynamo(value: Any) -> Any:
    """Floats as Decimals (exactly their repr), recursively."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: to_dynamo(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_dynamo(v) for v in value]
    return value


def iso_now(now: float | None = None) -> str:
    """ISO-8601 UTC with microseconds (sortable as text: the GSIs' sort keys)."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso_to_epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def condition_failed(exc: Exception) -> bool:
    """A conditional write that was refused (the answer, not a fault)."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


class Table:
    """A DynamoDB table behind an injected boto3 client, with typed (de)serialisation.

    Args:
        table: The table's name.
        client: A boto3 DynamoDB client (never created here).
        clock: Epoch seconds (injectable).
    """

    def __init__(self, table: str, client: Any, *, clock: Any = time.time) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self.table = table
        self.client = client
        self.clock = clock
        self._ser, self._de = TypeSerializer(), TypeDeserializer()

    def dump(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return {k: self._ser.serialize(to_dynamo(v)) for k, v in values.items()}

    def load(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {k: to_python(self._de.deserialize(v)) for k, v in item.items()}
