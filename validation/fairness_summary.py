"""The headline of a fairness check, apart from the check itself.

:class:`FairnessSummary` is what :func:`validation.fairness.check_fairness` reports
beside its full report, and what the fairness stage's ``result.json`` holds
(:class:`pipelines.stages.fairness.FairnessResult` adds where it wrote it). It lives in
a module of its own, which imports nothing heavy, so that the stage modules stay cheap
to import while Airflow parses the DAG files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FairnessSummary:
    """The headline of a fairness check (the stage's ``result.json`` adds where it wrote
    it, :class:`pipelines.stages.fairness.FairnessResult`)."""

    favourable_outcome: str
    decision_threshold: float
    rows: int
    attributes: tuple[str, ...]
    intersections: tuple[str, ...]
    skipped_intersections: dict[str, str]
    excluded_groups: dict[str, dict[str, int]]
    proxy_flags: tuple[str, ...]
    gate_metrics: dict[str, dict[str, float | None]]
    n_bootstrap: int
    seed: int
    warnings: tuple[str, ...] = ()
