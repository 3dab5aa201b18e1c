"""The building blocks of the spec schema: the strict base model, names, durations, schedules."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@nightly"}
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?]+$")
DURATION_PATTERN = re.compile(r"^(\d+)(s|m|h|d)$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_seconds(value: str) -> int:
    """``30m``, ``24h``, ``7d`` as seconds."""
    match = DURATION_PATTERN.match(value)
    if match is None:
        raise ValueError(f"{value!r} must look like 30s, 30m, 24h, 7d")
    return int(match.group(1)) * _DURATION_SECONDS[match.group(2)]


class StrictModel(BaseModel):
    """Base for every spec section: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def check_schedule(value: str) -> str:
    """A cron expression with 5 fields, an Airflow preset, or ``none``."""
    if value in _CRON_PRESETS or value == "none":
        return value
    parts = value.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(p) for p in parts):
        raise ValueError(
            f"{value!r} is neither a cron expression with 5 fields nor one of "
            f"{', '.join(sorted(_CRON_PRESETS))}, none"
        )
    return value


def check_duration(value: str) -> str:
    if not DURATION_PATTERN.match(value):
        raise ValueError(f"{value!r} is not a duration like 30m, 1h or 7d")
    return value


def duration_field(value: str, field: str, examples: str = "30m, 1h, 7d") -> str:
    """``value`` if it is a duration; else the ValueError a spec field's validator raises:
    ``FIELD 'value' must look like EXAMPLES`` (without ``FIELD `` when ``field`` is empty)."""
    if not DURATION_PATTERN.match(value):
        raise ValueError(" ".join(filter(None, (field, f"{value!r} must look like {examples}"))))
    return value
