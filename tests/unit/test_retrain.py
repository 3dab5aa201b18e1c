"""Retrain triggers: the reason of each kind of run, the schedule, the REST event."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from dags.govml_airflow.assets import lifecycle_schedule, trigger_reason
from ops.retrain import post_retrain_event, retrain_uri
from pipelines.errors import ConfigError, GovMLError
from tests.http_fakes import JsonHandler
from tests.support import http_server


def _context(run_type: str, events: dict | None = None, **params: Any) -> dict[str, Any]:
    return {
        "dag_run": SimpleNamespace(run_type=run_type),
        "params": params,
        "triggering_asset_events": events or {},
    }


def test_an_asset_event_gives_its_reason() -> None:
    from dags.govml_airflow.assets import retrain_asset

    asset = retrain_asset("fraud")
    event = SimpleNamespace(
        extra={"reason": "drift (alarm): amount in region=north", "source": "fraud_monitoring"},
        source_dag_id="fraud_monitoring",
        timestamp="2026-11-29T01:00:00+00:00",
    )
    why = trigger_reason(_context("asset_triggered", {asset: [event, event]}))
    assert why["trigger"] == "asset"
    assert why["reason"] == "drift (alarm): amount in region=north"  # same reason once
    assert why["events"][0]["source"] == "fraud_monitoring" and len(why["events"]) == 2


def test_schedule_and_manual_runs() -> None:
    assert trigger_reason(_context("scheduled"))["reason"] == "nightly retraining (schedule)"
    manual = trigger_reason(_context("manual", reason="market-shock notice from treasury"))
    assert manual == {
        "trigger": "manual", "reason": "market-shock notice from treasury",
        "run_type": "manual", "events": [],
    }  # fmt: skip
    assert "no reason given" in trigger_reason(_context("manual"))["reason"]


def test_the_lifecycle_schedule_is_its_cron_or_the_asset() -> None:
    schedule = lifecycle_schedule("fraud", "0 2 * * *")
    assert retrain_uri("fraud") in str(schedule) and "0 2 * * *" in str(schedule)
    assert "0 2 * * *" in str(lifecycle_schedule("fraud", "@nightly"))
    only_asset = lifecycle_schedule("fraud", "none")
    assert [a.uri for a in only_asset] == [retrain_uri("fraud")]


class _Airflow(JsonHandler):
    posted: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("Authorization") != "Bearer T":
            return self.reply(401, {"detail": "no"})
        assets = [{"id": 7, "uri": retrain_uri("fraud")}, {"id": 8, "uri": "govml://other"}]
        self.reply(200, {"assets": assets, "total_entries": 2})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["asset_id"] != 7:
            return self.reply(422, {"detail": "unknown asset"})
        _Airflow.posted.append(body)
        self.reply(200, {"id": 99, **body})


@pytest.fixture
def airflow() -> Iterator[str]:
    with http_server(_Airflow) as base:
        yield base


def test_post_retrain_event_posts_to_the_models_asset(airflow: str) -> None:
    event = post_retrain_event(airflow, "T", "fraud", "regulator request", source="govml by ana")
    assert event["id"] == 99
    assert _Airflow.posted[-1] == {
        "asset_id": 7, "extra": {"reason": "regulator request", "source": "govml by ana"}
    }  # fmt: skip
    with pytest.raises(GovMLError, match="does not know the asset govml://models/credit"):
        post_retrain_event(airflow, "T", "credit", "why", source="x")
    with pytest.raises(GovMLError, match="refused the retrain event \\(401\\)"):
        post_retrain_event(airflow, "wrong", "fraud", "why", source="x")
    with pytest.raises(ConfigError, match="needs a reason"):
        post_retrain_event(airflow, "T", "fraud", "  ", source="x")
