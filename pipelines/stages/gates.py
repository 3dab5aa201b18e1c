"""Stage ``gates``: every automatic gate (performance, champion, fairness, explanations).

Inputs: the ``evaluate``, ``fairness`` and ``explain`` folders; waits for ``lineage`` and
``validate_data``. Output, in ``<run>/gates/``: ``gates.json`` and ``result.json``
(:class:`validation.gates.GateReport`). Governance record: one ``gate_result`` per check,
written whether the gates pass or stop the run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.runs import RunContext
from pipelines.spec import ModelSpec

if TYPE_CHECKING:
    from validation.gates import GateInputs, GateReport

log = logging.getLogger(__name__)

NAME = "gates"
OUTPUTS: tuple[str, ...] = ("gates.json", "result.json")


def record(run: RunContext, folder: Path) -> None:
    """The stage's governance record (``gate_result`` per check)."""
    from registry.governance import record_gate_results

    record_gate_results(run.settings.governance_url, run.spec, run.run_id, folder)


def check_gates(spec: ModelSpec, inputs: GateInputs, out_dir: Path) -> GateReport:
    """Evaluate every gate (:func:`validation.gates.evaluate_gates`); write ``gates.json``
    and ``result.json`` in ``out_dir``; then raise GateFailedError listing every failed
    check."""
    from pipelines.artifacts import write_json
    from pipelines.errors import GateFailedError
    from validation.gates import evaluate_gates

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = evaluate_gates(spec, inputs, out)
    write_json(out / "gates.json", report.gates_json())
    write_json(out / "result.json", report.to_dict())
    for check in report.checks:
        level = {"fail": logging.ERROR, "warn": logging.WARNING}.get(check.status, logging.INFO)
        log.log(level, "%s: gate %s: %s", spec.name, check.status, check.message)
    if not report.passed:
        raise GateFailedError(report.failures)
    return report


def run(run: RunContext, eval_dir: str, fairness_dir: str, explain_dir: str) -> str:
    """Check the gates; the stage folder. Raises GateFailedError listing every failure."""
    from validation.gates import GateInputs

    folder = run.stage_dir(NAME)
    try:
        inputs = GateInputs(Path(eval_dir), Path(fairness_dir), Path(explain_dir))
        check_gates(run.spec, inputs, folder)
    finally:
        record(run, folder)
    return str(folder)
