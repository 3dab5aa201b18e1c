"""An A/B test's state and files: the state file ``<serving dir>/abtests/<model>.json``,
the gateway's A/B log folder and the report folder of a test."""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Settings
from pipelines.errors import GovMLError
from serving.control.routes import (
    RUNNING,
    abtest_state_path,
    gateway_dir,
)


class AbTestError(GovMLError):
    """An A/B test action that does not fit the spec or the test's state."""

    exit_code = 2


@dataclass
class TestState:
    id: str
    model: str
    champion: dict[str, str]  # {"url", "version"}
    challenger: dict[str, str]
    salt: str
    started: float
    started_by: str
    design: dict[str, Any]
    plan: dict[str, Any]  # the spec's abtest section when the test started
    status: str = RUNNING  # running | shipped | stopped
    looks: list[dict[str, Any]] = field(default_factory=list)
    ended: float | None = None
    outcome: dict[str, Any] | None = None


# --------------------------------------------------------------------------- files
def abtest_logs(settings: Settings, test_id: str) -> Path:
    """The gateway's A/B log folder of a test (the gateway's ``--abtest_dir`` default)."""
    return gateway_dir(settings) / "abtests" / test_id


def report_dir(settings: Settings, model: str, test_id: str) -> Path:
    return settings.var_dir / "abtests" / model / test_id


def load_state(settings: Settings, model: str) -> TestState | None:
    path = abtest_state_path(settings, model)
    try:
        return TestState(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise AbTestError(f"A/B test state {path}: {exc}") from None


def save_state(settings: Settings, state: TestState) -> None:
    path = abtest_state_path(settings, state.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2, default=json_default))
    os.replace(tmp, path)


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def iso_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")
