"""The feature transformer's input contract: raw transactions, checked strictly.

A transaction carries exactly the fields the model needs before its aggregates exist
(:meth:`TransactionSchema.fields`): the spec's id column (each transaction's id: the
online state records a transaction once), its time column, every column an aggregate
groups by, sums, filters on, and the model's raw features. Each field follows the
rules of the model server (:mod:`serving.schema`: JSON types, ranges, categories,
missing-value policy; a personal-data value is never echoed); the time is an ISO 8601
text (``2026-01-31T12:00:00``, ``...T12:00:00.123456789``, with ``Z`` or an offset; a
time without one is UTC, as in the training data). A bad request gets one ``400``
listing every problem, each naming the row and the field; nothing is recorded then.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines.errors import SpecError
from pipelines.features_online import OnlineFeatures
from pipelines.spec import ColumnType, ModelSpec
from serving.feature_values import column_check
from serving.schema import MAX_LISTED_FIELDS, MAX_PROBLEMS, InputError

DEFAULT_MAX_ROWS = 1000
_ISO = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_SECOND = dt.timedelta(seconds=1)
_MAX_NS = 2**63 - 1


def parse_time_ns(value: Any) -> int:
    """An ISO 8601 time as integer nanoseconds since the epoch (exact); ValueError."""
    if type(value) is not str:
        raise ValueError("expected an ISO 8601 time text like 2026-01-31T12:00:00Z")
    match = _ISO.match(value)
    if match is None:
        raise ValueError("expected an ISO 8601 time like 2026-01-31T12:00:00Z")
    day, clock, fraction, zone = match.groups()
    offset = "+00:00" if zone in (None, "Z") else zone
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError:
        raise ValueError("not a valid date and time") from None
    ns = (moment - _EPOCH) // _ONE_SECOND * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
    if not -_MAX_NS <= ns <= _MAX_NS:
        raise ValueError("outside the years 1678-2261")
    return ns


@dataclass(frozen=True)
class Transaction:
    """One checked transaction."""

    values: dict[str, Any]  # every field but the time, as sent (None for null)
    time_ns: int
    event_id: int


class TransactionSchema:
    """The fields of a spec's raw transactions and their checks."""

    def __init__(
        self, spec: ModelSpec, online: OnlineFeatures, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        columns = spec.data.columns
        names = [online.id_column, online.time_column]
        for name in (*online.needed_columns, *spec.features.raw):
            if name not in names:
                names.append(name)
        checks: dict[str, Callable[[Any], float]] = {}
        for name in names:
            column = columns.get(name)
            if column is None:
                raise SpecError(f"{spec.name}: transaction field {name!r} is not in data.columns")
            if name == online.time_column:
                if column.type != ColumnType.DATETIME:
                    raise SpecError(f"{spec.name}: time column {name} must be a datetime")
                continue
            if column.type == ColumnType.DATETIME:
                raise SpecError(f"{spec.name}: a transformer cannot take datetime field {name}")
            if name == online.id_column:
                column = column.model_copy(update={"missing": "forbid"})
            checks[name] = column_check(name, column)
        self.fields = tuple(names)
        self.time_column = online.time_column
        self.id_column = online.id_column
        self.max_rows = max_rows
        self._checks = checks
        self._online = online
        self._known = frozenset(names)
        self._spec_columns = {name: columns[name] for name in names}
        self._spec_name = spec.name

    def json_schema(self) -> dict[str, Any]:
        """JSON Schema (draft 2020-12 / OpenAPI 3.1) of the V1 request of raw
        transactions, field by field as :meth:`validate` checks them."""
        from serving.feature_values import raw_feature
        from serving.schema_openapi import JSON_SCHEMA_DIALECT, field_schema

        columns = self._spec_columns
        properties: dict[str, Any] = {}
        for name in self.fields:
            column = columns[name]
            if name == self.time_column:
                properties[name] = {
                    "type": "string",
                    "pattern": _ISO.pattern,
                    "description": "ISO 8601 time; without Z or an offset it is UTC",
                }
            elif column.type == ColumnType.STRING:
                properties[name] = {
                    "type": "string" if name == self.id_column else ["string", "null"]
                }
            else:
                field = field_schema(raw_feature(name, column, None))
                if name == self.id_column and isinstance(field.get("type"), list):
                    field["type"] = [t for t in field["type"] if t != "null"]
                properties[name] = field
        row = {
            "type": "object",
            "title": f"{self._spec_name} transaction",
            "properties": properties,
            "required": list(self.fields),
            "additionalProperties": False,
        }
        return {
            "$schema": JSON_SCHEMA_DIALECT,
            "title": f"{self._spec_name} raw transactions (KServe V1, feature transformer)",
            "type": "object",
            "properties": {
                "instances": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": self.max_rows,
                    "items": row,
                }
            },
            "required": ["instances"],
            "additionalProperties": False,
        }

    def validate(self, instances: Any) -> list[Transaction]:
        """The transactions of a V1 ``instances`` list; :class:`InputError` otherwise."""
        if not isinstance(instances, list):
            raise InputError(["'instances' must be a list of transactions {field: value}"])
        if not instances:
            raise InputError(["no instances: send at least one transaction"])
        if len(instances) > self.max_rows:
            raise InputError(
                [f"too many instances: {len(instances)} (at most {self.max_rows} per request)"]
            )
        problems: list[str] = []
        out: list[Transaction] = []
        for i, row in enumerate(instances):
            if len(problems) >= MAX_PROBLEMS:
                problems.append(f"(stopped after {MAX_PROBLEMS} problems)")
                break
            transaction = self._row(i, row, problems)
            if transaction is not None:
                out.append(transaction)
        if problems:
            raise InputError(problems)
        return out

    def _row(self, i: int, row: Any, problems: list[str]) -> Transaction | None:
        if not isinstance(row, Mapping):
            problems.append(f"row {i}: expected an object {{field: value}}")
            return None
        before = len(problems)
        values: dict[str, Any] = {}
        found = 0
        for name, check in self._checks.items():
            if name not in row:
                problems.append(f"row {i}: {name}: missing field")
                continue
            found += 1
            value = row[name]
            try:
                check(value)
            except ValueError as exc:
                problems.append(f"row {i}: {name}: {exc}")
                continue
            values[name] = None if isinstance(value, float) and math.isnan(value) else value
        time_ns = 0
        if self.time_column not in row:
            problems.append(f"row {i}: {self.time_column}: missing field")
        else:
            found += 1
            try:
                time_ns = parse_time_ns(row[self.time_column])
            except ValueError as exc:
                problems.append(f"row {i}: {self.time_column}: {exc}")
        if len(row) != found:
            self._unknown(i, row, problems)
        if len(problems) > before:
            return None
        return Transaction(values, time_ns, self._online.event_id(values[self.id_column]))

    def _unknown(self, i: int, row: Mapping[str, Any], problems: list[str]) -> None:
        unknown = [k for k in row if k not in self._known]
        for key in unknown[:MAX_LISTED_FIELDS]:
            shown = repr(key[:40]) if isinstance(key, str) else "a non-text key"
            problems.append(f"row {i}: unknown field {shown} (not a transaction field)")
        if len(unknown) > MAX_LISTED_FIELDS:
            problems.append(f"row {i}: ... and {len(unknown) - MAX_LISTED_FIELDS} more")
