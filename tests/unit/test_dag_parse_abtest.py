"""The A/B test DAGs: one per spec with an ``abtest`` section, parsed without a database,
the network or heavy libraries (the same isolated parse as ``test_dag_parse``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.unit.test_dag_parse import ROOT, _parse


def test_one_daily_abtest_dag_per_spec_with_an_abtest_section(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("fraud", "credit", "german_credit"):
        shutil.copy(ROOT / "specs" / f"{name}.yaml", specs / f"{name}.yaml")
    data = yaml.safe_load((ROOT / "specs" / "credit.yaml").read_text())
    data["name"] = "sme_credit"
    del data["abtest"]  # no abtest section: no A/B DAG
    (specs / "sme_credit.yaml").write_text(yaml.safe_dump(data))
    parsed = _parse(ROOT / "dags", specs, tmp_path)
    assert parsed["errors"] == {}
    abtests = {d for d in parsed["dags"] if d.endswith("_abtest")}
    assert abtests == {"fraud_abtest", "credit_abtest"}
    for dag_id in abtests:
        dag = parsed["dags"][dag_id]
        assert dag["tasks"] == ["analyse", "running"]
        assert dag["schedule"] == "@daily" and dag["catchup"] is False
    assert parsed["heavy"] == []
