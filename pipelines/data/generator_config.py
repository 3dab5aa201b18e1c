"""The base of a data generator's configuration (a frozen dataclass).

Its parameters as the manifest records them (:meth:`GeneratorConfig.to_params`) and back
(:meth:`GeneratorConfig.from_params`), and the checks of its fields, whose messages name
the config class (``FraudConfig.days must be ...``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any, Self

import numpy as np

from pipelines.errors import DataValidationError


class GeneratorConfig:
    def to_params(self) -> dict[str, Any]:
        """The resolved configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """Rebuild a config from manifest params (keys that are not fields are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in params.items() if k in names})

    def check_int(self, name: str, low: int, high: int) -> None:
        value = getattr(self, name)
        owner = type(self).__name__
        if not isinstance(value, int | np.integer) or isinstance(value, bool):
            raise DataValidationError(f"{owner}.{name} must be an integer, got {value!r}")
        if not low <= value <= high:
            raise DataValidationError(f"{owner}.{name} must be in [{low}, {high}], got {value}")

    def check_date(self, name: str) -> None:
        value = getattr(self, name)
        message = f"{type(self).__name__}.{name} must be a 'YYYY-MM-DD' date string, got {value!r}"
        if not isinstance(value, str) or len(value) != 10:
            raise DataValidationError(message)
        try:
            dt.date.fromisoformat(value)
        except ValueError as exc:
            raise DataValidationError(message) from exc

    def check_float(self, name: str, low: float, high: float) -> None:
        value = getattr(self, name)
        owner = type(self).__name__
        if not isinstance(value, int | float | np.floating) or isinstance(value, bool):
            raise DataValidationError(f"{owner}.{name} must be a number, got {value!r}")
        if not (math.isfinite(float(value)) and low <= float(value) <= high):
            raise DataValidationError(f"{owner}.{name} must be in [{low}, {high}], got {value}")
