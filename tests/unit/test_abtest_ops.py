"""The A/B test's orchestration (ops.abtest) on synthetic logs: what the gateway and the
model servers would have written, day by day, with a real governance store (SQLite).

Each scenario starts a test through :func:`ops.abtest.start` (routes file in A/B mode,
``abtest_started`` audited), writes a day of assignments, enrolments, prediction rows and
labels, and runs the daily look with the clock at the end of that day."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from pipelines.config import load_settings
from pipelines.spec import parse_spec
from serving.control import routes
from tests.support import stack_env

ROOT = Path(__file__).resolve().parents[2]
CHAMPION = {"url": "http://127.0.0.1:9101", "version": "1"}
CHALLENGER = {"url": "http://127.0.0.1:9102", "version": "2"}
PURPOSES = ["debt_consolidation", "home_improvement", "car", "education", "other"]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    from ops import abtest
    from registry.store import upgrade
    from serving.gateway_routes import write_routes

    settings = load_settings(stack_env(tmp_path / "var"))
    upgrade(settings.governance_url)
    routes = settings.serving_dir / "gateway" / "routes.json"
    routes.parent.mkdir(parents=True)
    write_routes(routes, {"models": {"credit": {"champion": CHAMPION}}})
    monkeypatch.setattr(abtest, "endpoint_of", lambda s, m, v: dict(CHALLENGER, version=v))
    return SimpleNamespace(settings=settings, routes=routes, rng=np.random.default_rng(5))


def _spec(**abtest: object) -> object:
    raw = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    section = copy.deepcopy(raw["abtest"])
    section.update(
        {"baseline": 0.75, "minimum_detectable_effect": 0.05, "split_percent": 50,
         "max_duration": "7d", "exposure_cap": {}, **abtest}
    )  # fmt: skip
    raw["abtest"] = section
    return parse_spec(raw, "credit.yaml")


def _day(
    world: SimpleNamespace,
    state: object,
    day: int,
    n: int,
    approve: tuple[float, float],
    default: tuple[float, float],
    treatment_share: float = 0.5,
) -> float:
    """One day of traffic: n new applicants, labels for all; the clock at the day's end."""
    from ops.abtest_state import abtest_logs

    rng = world.rng
    folder = abtest_logs(world.settings, state.id)  # type: ignore[attr-defined]
    folder.mkdir(parents=True, exist_ok=True)
    start = state.started + day * 86_400 + 60  # type: ignore[attr-defined]
    logs = {v: world.settings.serving_dir / f"credit-v{v}" / "predictions" for v in "12"}
    for path in logs.values():
        path.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"enrol": [], "assign": [], "1": [], "2": [], "labels": []}
    for i in range(n):
        t = start + i
        arm = "treatment" if rng.random() < treatment_share else "control"
        k = int(arm == "treatment")
        entity, rid = f"{day:02d}{i:06d}".rjust(16, "0"), f"d{day}r{i}"
        version = CHALLENGER["version"] if k else CHAMPION["version"]
        approved = rng.random() < approve[k]
        score = rng.uniform(0, 0.19) if approved else rng.uniform(0.21, 1)
        bad = int(rng.random() < (default[k] if approved else 0.5))
        stamp = dt.datetime.fromtimestamp(t, dt.UTC).isoformat()
        features = {
            "purpose": PURPOSES[i % len(PURPOSES)],
            "credit_history_months": int(rng.integers(0, 300)),
            "debt_to_income": float(rng.uniform(0, 1)),
            "loan_amount": float(rng.uniform(1_000, 20_000)),
        }
        lines["enrol"].append(json.dumps({"time": t, "entity": entity, "arm": arm}))
        lines["assign"].append(json.dumps({
            "time": t, "request_id": rid, "entity": entity, "arm": arm, "route": arm,
            "status": 200, "version": version,
        }))  # fmt: skip
        lines[version].append(json.dumps({
            "request_id": f"{rid}:0", "timestamp": stamp, "model_name": "credit",
            "model_version": version, "features": features, "score": score,
        }))  # fmt: skip
        lines["labels"].append(json.dumps({"request_id": f"{rid}:0", "label": bad}))
    for name, path in (("enrol", folder / "enrolments.jsonl"),
                       ("assign", folder / "assignments.jsonl")):  # fmt: skip
        with path.open("a") as out:
            out.write("\n".join(lines[name]) + "\n")
    for version, path in logs.items():
        (path / f"predictions-day{day:02d}.jsonl").write_text("\n".join(lines[version]) + "\n")
    feed = world.settings.var_dir / "labels" / "credit"
    feed.mkdir(parents=True, exist_ok=True)
    (feed / f"day{day:02d}.jsonl").write_text("\n".join(lines["labels"]) + "\n")
    return state.started + (day + 1) * 86_400 - 1  # type: ignore[attr-defined]


def _route(world: SimpleNamespace) -> dict:
    return json.loads(world.routes.read_text())["models"]["credit"]


def _events(world: SimpleNamespace, kind: str) -> list:
    from registry import audit

    return audit.events(world.settings.governance_url, model_name="credit", kinds=[kind])


def test_start_fixes_the_plan_and_puts_the_route_in_ab_mode(world: SimpleNamespace) -> None:
    from ops import abtest
    from pipelines.errors import GovMLError

    spec = _spec()
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    route = _route(world)
    assert route["abtest"]["id"] == state.id and route["challenger_percent"] == 50
    assert route["champion"] == CHAMPION and route["salt"] == state.salt
    assert state.design["looks"] == 7 and state.design["baseline"] == 0.75
    started = _events(world, "abtest_started")[-1]
    assert started.actor == "ops-anna" and started.payload["design"] == state.design
    with pytest.raises(GovMLError, match="is running"):
        abtest.start(world.settings, spec, "2", "ops-anna")
    status = abtest.status(world.settings, spec)
    assert status["status"] == "running" and status["enrolled"] == {"control": 0, "treatment": 0}


def test_a_harmful_challenger_is_stopped_by_its_guardrail(world: SimpleNamespace) -> None:
    from ops import abtest, abtest_state
    from pipelines.errors import GovMLError

    spec = _spec()
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    actions = []
    for day in range(7):  # approvals alike, the challenger's approved book defaults 3x
        now = _day(world, state, day, 300, approve=(0.75, 0.75), default=(0.05, 0.15))
        report = abtest.analyse(world.settings, spec, now=now)
        actions.append(report["decision"]["action"])
        if actions[-1] != "continue":
            break
    assert actions[-1] == "stop" and len(actions) < 7, actions  # before the planned end
    assert "guardrail default_rate" in report["decision"]["reasons"][0]
    assert _route(world) == {"champion": CHAMPION}
    stopped = _events(world, "abtest_stopped")[-1]
    assert stopped.actor == abtest.ANALYST and stopped.payload["test_id"] == state.id
    assert len(_events(world, "abtest_analysed")) == len(actions)
    with pytest.raises(GovMLError, match="no A/B test running"):
        abtest.analyse(world.settings, spec, now=now)
    # every look's report is kept, and the audit event names the JSON's SHA-256
    folder = abtest_state.report_dir(world.settings, "credit", state.id)
    assert len(list(folder.glob("look-*/report.json"))) == len(actions)
    import hashlib

    latest = (folder / "latest.json").read_bytes()
    assert (
        _events(world, "abtest_analysed")[-1].payload["report_sha256"]
        == hashlib.sha256(latest).hexdigest()
    )


def test_a_better_challenger_ships_and_the_looks_are_recorded(world: SimpleNamespace) -> None:
    from ops import abtest

    spec = _spec()
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    for day in range(7):
        now = _day(world, state, day, 400, approve=(0.75, 0.85), default=(0.05, 0.05))
        report = abtest.analyse(world.settings, spec, now=now)
        if report["decision"]["action"] != "continue":
            break
    assert report["decision"]["action"] == "ship", report["decision"]
    saved = abtest.load_state(world.settings, "credit")
    assert saved.status == "shipped" and len(saved.looks) == day + 1
    fractions = [look["fraction"] for look in saved.looks]
    assert fractions == sorted(fractions) and len(set(fractions)) == len(fractions)
    assert saved.looks[-1]["z"] >= saved.looks[-1]["boundary"]
    assert _route(world) == {"champion": CHAMPION}  # ship is evidence, not a promotion
    concluded = _events(world, "abtest_concluded")[-1]
    assert concluded.payload["decision"] == "ship"
    effect = report["primary"]["effect"]
    assert "CUPED on debt_to_income" in effect["test"]
    assert {s["segment"] for s in report["segments"]} == {"purpose", "tenure_band"}


def test_a_look_without_new_units_spends_no_primary_alpha_and_the_last_day_is_final(
    world: SimpleNamespace,
) -> None:
    from ops import abtest

    spec = _spec()
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    now = _day(world, state, 0, 200, approve=(0.75, 0.75), default=(0.05, 0.05))
    first = abtest.analyse(world.settings, spec, now=now)
    again = abtest.analyse(world.settings, spec, now=now + 60)
    assert first["decision"]["action"] == again["decision"]["action"] == "continue"
    assert again["look"]["number"] == 1 and again["look"]["new_information"] is False
    looks = abtest.load_state(world.settings, "credit").looks
    assert [look["fraction"] is not None for look in looks] == [True, False]  # no new units
    assert looks[1]["guard_fraction"] > looks[0]["guard_fraction"]  # guardrails: calendar
    final = abtest.analyse(world.settings, spec, now=state.started + 7 * 86_400)
    assert final["look"]["final"] and final["look"]["fraction"] == 1.0
    assert final["decision"]["action"] == "stop"
    assert "champion stays" in final["decision"]["reasons"][0]
    assert _route(world) == {"champion": CHAMPION}


def test_a_sample_ratio_mismatch_stops_the_test(world: SimpleNamespace) -> None:
    from ops import abtest

    spec = _spec()
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    now = _day(world, state, 0, 2_000, (0.75, 0.75), (0.05, 0.05), treatment_share=0.45)
    report = abtest.analyse(world.settings, spec, now=now)
    assert report["srm"]["mismatch"]
    assert report["decision"]["action"] == "stop"
    assert "sample ratio mismatch" in report["decision"]["reasons"][0]


def test_msprt_monitoring(world: SimpleNamespace) -> None:
    from ops import abtest

    spec = _spec(sequential={"method": "msprt"})
    state = abtest.start(world.settings, spec, "2", "ops-anna")
    p_values = []
    for day in range(3):
        now = _day(world, state, day, 300, approve=(0.75, 0.75), default=(0.05, 0.05))
        report = abtest.analyse(world.settings, spec, now=now)
        p_values.append(report["primary"]["monitor"]["pvalue"])
    assert p_values == sorted(p_values, reverse=True)  # always-valid p never goes back up
    assert report["decision"]["action"] == "continue"
    assert report["primary"]["monitor"]["method"] == "msprt"


def test_a_manual_stop_needs_a_reason_and_a_running_test(world: SimpleNamespace) -> None:
    from ops import abtest
    from pipelines.errors import GovMLError

    spec = _spec()
    with pytest.raises(GovMLError, match="no A/B test running"):
        abtest.stop(world.settings, spec, "ops-anna", "nothing to stop")
    abtest.start(world.settings, spec, "2", "ops-anna")
    with pytest.raises(GovMLError, match="reason"):
        abtest.stop(world.settings, spec, "ops-anna", "  ")
    abtest.stop(world.settings, spec, "ops-anna", "business decision")
    assert _route(world) == {"champion": CHAMPION}
    assert _events(world, "abtest_stopped")[-1].payload["manual"] is True


def test_a_look_before_any_data_continues_and_a_new_test_keeps_the_old_state(
    world: SimpleNamespace,
) -> None:
    from ops import abtest, abtest_state

    spec = _spec()
    first = abtest.start(world.settings, spec, "2", "ops-anna")
    report = abtest.analyse(world.settings, spec, now=first.started + 3_600)
    assert report["decision"] == {"action": "continue", "reasons": ["no data on approval_rate yet"]}
    folder = abtest_state.report_dir(world.settings, "credit", first.id)
    assert "Decision: continue" in (folder / "latest.html").read_text()
    abtest.stop(world.settings, spec, "ops-anna", "wrong version")
    second = abtest.start(world.settings, spec, "3", "ops-anna")
    assert second.id != first.id and second.salt != first.salt
    kept = routes.abtest_state_path(world.settings, "credit").with_name(f"{first.id}.json")
    assert json.loads(kept.read_text())["status"] == "stopped"
