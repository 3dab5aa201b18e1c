"""The A/B test report: one self-contained HTML page (plots embedded as PNG) beside the
JSON it is drawn from.

The page answers an auditor's questions in order: what was hypothesised and planned
(before any data), what was decided and why, the primary metric with its sequential
boundaries at every look, the guardrails with their bounds, the sample-ratio check,
segment effects with their multiplicity-adjusted p-values, and what data went in.
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from pipelines import sequential
from pipelines.figures import img_tag, png_base64
from pipelines.formatting import cell, html_grid, html_pairs

COLOURS = {"ship": "#1a7f37", "stop": "#cf222e", "continue": "#9a6700"}


def monitor_plot(report: dict[str, Any]) -> str:
    """The primary metric's statistic at each look against its boundaries, beside the
    boundaries planned for equally spaced daily looks."""
    looks = report["history"]
    design = report["test"]["design"]
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    fractions = [look["fraction"] for look in looks]
    if report["primary"]["monitor"]["method"] == "msprt":
        pvalues = [max(look["pvalue"], 1e-12) for look in looks]
        ax.semilogy(fractions, pvalues, "o-", label="always-valid p")
        ax.axhline(design["alpha"], color="#cf222e", ls="--", label="alpha")
        ax.set_ylabel("always-valid p-value")
    else:
        planned_at = np.arange(1, design["looks"] + 1) / design["looks"]
        planned = sequential.boundaries(planned_at, design["alpha"], design["spending"])
        shown = planned < sequential.NO_BOUNDARY
        for sign in (1, -1):
            ax.plot(
                planned_at[shown],
                sign * planned[shown],
                ls=":",
                color="#8c959f",
                label="planned boundary (daily looks)" if sign == 1 else None,
            )
        bounds = np.array([look["boundary"] for look in looks], dtype=np.float64)
        real = bounds < sequential.NO_BOUNDARY
        for sign in (1, -1):
            ax.plot(
                np.asarray(fractions)[real],
                sign * bounds[real],
                "_",
                ms=14,
                mew=2,
                color="#cf222e",
                label="boundary at the look" if sign == 1 else None,
            )
        ax.plot(fractions, [look["z"] for look in looks], "o-", color="#0969da", label="z")
        ax.axhline(0, color="#6e7781", lw=0.8)
        ax.set_ylabel("z (treatment - control)")
        top = max(
            [abs(look["z"]) for look in looks]
            + [float(planned[shown].max(initial=3)), float(bounds[real].max(initial=0))]
        )
        ax.set_ylim(-1.15 * top, 1.15 * top)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("information fraction (units / planned maximum)")
    ax.set_title(f"Sequential monitoring of {report['test']['primary_metric']}")
    ax.legend(loc="best", fontsize=7)
    return png_base64(fig, tight_layout=True)


def effects_plot(report: dict[str, Any]) -> str:
    """Primary metric and guardrails: difference, interval, and each guardrail's bound."""
    rows = [
        (
            "primary: " + report["test"]["primary_metric"],
            report["primary"]["effect"],
            report["primary"]["monitor"],
            None,
            None,
        )
    ]
    for guard in report["guardrails"]:
        rows.append((guard["metric"], guard["effect"], None, guard["bound"], guard["better"]))
    fig = Figure(figsize=(6.5, 1.3 + 1.0 * len(rows)))
    axes = np.atleast_1d(fig.subplots(len(rows), 1))
    for ax, (name, effect, monitor, bound, better) in zip(axes, rows, strict=True):
        ax.axvline(0, color="#6e7781", lw=0.8)
        ax.set_yticks([])
        ax.set_title(name, fontsize=9, loc="left")
        if effect is None:
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center")
            continue
        low, high = effect["ci_low"], effect["ci_high"]
        if monitor is not None:
            low, high = monitor["ci_low"], monitor["ci_high"]
        ax.errorbar(
            [effect["difference"]],
            [0],
            xerr=[[effect["difference"] - low], [high - effect["difference"]]],
            fmt="o",
            color="#0969da",
            capsize=4,
        )
        if bound is not None:
            worse_side = bound if better == "lower" else -bound
            ax.axvline(worse_side, color="#cf222e", ls="--", label="bound")
            ax.legend(loc="best", fontsize=7)
    axes[-1].set_xlabel("difference, treatment - control (metric units)")
    return png_base64(fig, tight_layout=True)


def segments_plot(report: dict[str, Any]) -> str | None:
    tested = [s for s in report["segments"] if s["effect"] is not None]
    if not tested:
        return None
    fig = Figure(figsize=(6.5, 1.0 + 0.35 * len(tested)))
    ax = fig.subplots()
    for i, seg in enumerate(tested):
        effect = seg["effect"]
        colour = "#cf222e" if seg["harmful"] else ("#1a7f37" if seg["significant"] else "#0969da")
        ax.errorbar(
            [effect["difference"]],
            [i],
            fmt="o",
            color=colour,
            capsize=3,
            xerr=[
                [effect["difference"] - effect["ci_low"]],
                [effect["ci_high"] - effect["difference"]],
            ],
        )
    ax.axvline(0, color="#6e7781", lw=0.8)
    ax.set_yticks(range(len(tested)))
    ax.set_yticklabels([f"{s['segment']}={s['value']}" for s in tested], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"{report['test']['primary_metric']}: treatment - control")
    ax.set_title("Segments (red: significantly worse after correction)", fontsize=9)
    return png_base64(fig, tight_layout=True)


def enrolment_plot(report: dict[str, Any]) -> str:
    srm = report["srm"]
    total = srm["control"] + srm["treatment"]
    share = srm["expected_treatment_share"]
    fig = Figure(figsize=(4.5, 3.0))
    ax = fig.subplots()
    ax.bar(
        ["control", "treatment"],
        [srm["control"], srm["treatment"]],
        color=["#6e7781", "#0969da"],
        label="enrolled",
    )
    ax.scatter(
        ["control", "treatment"],
        [total * (1 - share), total * share],
        marker="_",
        s=900,
        color="#cf222e",
        label="expected",
        zorder=3,
    )
    ax.set_ylabel("entities")
    ax.set_title(f"Enrolment (SRM p = {srm['pvalue']:.3g})", fontsize=9)
    ax.legend(fontsize=7)
    return png_base64(fig, tight_layout=True)


# --------------------------------------------------------------------------- HTML
def _fmt(value: Any) -> str:
    return html.escape(cell(value, style="g", thousands=True))


def _table(rows: list[tuple[str, Any]]) -> str:
    return html_pairs((k, _fmt(v)) for k, v in rows)


def _grid(head: list[str], rows: list[list[Any]]) -> str:
    return html_grid(head, ([_fmt(v) for v in row] for row in rows))


def _img(data: str | None, alt: str) -> str:
    return "" if data is None else img_tag(data, alt)


def _guardrails_grid(report: dict[str, Any]) -> str:
    return _grid(
        ["metric", "bound", "harm", "z", "boundary", "breached", "difference", "CI low", "CI high"],
        [
            [
                g["metric"],
                g["bound"],
                g["harm"],
                g["z"],
                g["boundary"],
                g["breached"],
                *(
                    g["effect"][k] if g["effect"] else None
                    for k in ("difference", "ci_low", "ci_high")
                ),
            ]
            for g in report["guardrails"]
        ],
    )


def _segments_grid(report: dict[str, Any]) -> str:
    return _grid(
        ["segment", "value", "difference", "CI low", "CI high", "p", "adjusted p", "worse", "note"],
        [
            [
                s["segment"],
                s["value"],
                *(
                    s["effect"][k] if s["effect"] else None
                    for k in ("difference", "ci_low", "ci_high", "pvalue")
                ),
                s["pvalue_adjusted"],
                s["harmful"],
                s["note"],
            ]
            for s in report["segments"]
        ],
    )


def _primary_rows(primary: dict[str, Any]) -> list[tuple[str, Any]]:
    effect, monitor = primary["effect"], primary["monitor"]
    rows: list[tuple[str, Any]] = [("monitoring", monitor["method"])]
    if effect is not None:
        rows += [
            ("test", effect["test"]),
            (
                "control",
                f"{effect['control']['mean']:.5g} ({effect['control']['rows']:,} obs, "
                f"{effect['control']['units']:,} entities)",
            ),
            (
                "treatment",
                f"{effect['treatment']['mean']:.5g} ({effect['treatment']['rows']:,} "
                f"obs, {effect['treatment']['units']:,} entities)",
            ),
            ("difference", effect["difference"]),
            ("relative", effect["relative"]),
            (
                "sequential interval (valid at every look)",
                f"[{monitor['ci_low']:.4g}, {monitor['ci_high']:.4g}]",
            ),
            (
                "fixed-horizon interval (for reference)",
                f"[{effect['ci_low']:.4g}, {effect['ci_high']:.4g}]",
            ),
            ("z / boundary", f"{monitor['z']:.3f} / {_fmt(monitor['boundary'])}"),
            ("p (always-valid for mSPRT, nominal otherwise)", monitor["pvalue"]),
        ]
    if primary.get("cuped"):
        rows.append(
            (
                "CUPED",
                f"{primary['cuped']['covariate']}: variance "
                f"-{primary['cuped']['variance_reduction']:.1%}",
            )
        )
    return rows


def _plan_table(test: dict[str, Any]) -> str:
    design = test["design"]
    return _table(
        [
            ("primary metric", test["primary_metric"]),
            ("minimum detectable effect", design["minimum_detectable_effect"]),
            ("baseline", design["baseline"]),
            ("alpha / power", f"{design['alpha']} / {design['power']}"),
            ("split (treatment)", f"{design['treatment_share']:.0%}"),
            (
                "fixed-horizon units per arm",
                f"{design['fixed_control']:,} / {design['fixed_treatment']:,}",
            ),
            (
                "sequential",
                f"{design['method']} ({design['spending']}), {design['looks']} looks, "
                f"maximum {design['max_total']:,} units",
            ),
            ("planned duration (days)", design["days"]),
            ("exposure cap", json.dumps(test["exposure_cap"])),
            ("design warnings", "; ".join(design["warnings"]) or None),
        ]
    )


def _srm_table(srm: dict[str, Any]) -> str:
    return _table(
        [
            ("control entities", srm["control"]),
            ("treatment entities", srm["treatment"]),
            ("expected treatment share", srm["expected_treatment_share"]),
            ("chi-square p", srm["pvalue"]),
            ("mismatch", srm["mismatch"]),
        ]
    )


def _data_table(data: dict[str, Any]) -> str:
    return _table(
        [
            (
                "requests logged (control / treatment)",
                f"{data['requests']['control']:,} / {data['requests']['treatment']:,}",
            ),
            ("scored rows joined", data["rows"]),
            ("labelled rows", data["labelled"]),
            ("requests without prediction rows (yet)", data["unmatched"]),
            ("requests answered with an error", data["failed"]),
        ]
    )


def _head(test: dict[str, Any], colour: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>A/B test {html.escape(test["id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 980px; color: #1f2328 }}
table {{ border-collapse: collapse; margin: .5rem 0 1.2rem }}
th, td {{ border: 1px solid #d0d7de; padding: .25rem .5rem; font-size: .85rem; text-align: left }}
.decision {{ border-left: 6px solid {colour}; padding: .5rem 1rem; background: #f6f8fa }}
img {{ max-width: 100%; display: block; margin: .5rem 0 }}
</style></head><body>
<h1>A/B test {html.escape(test["id"])}: {html.escape(test["model"])}
v{html.escape(str(test["challenger"]["version"]))} vs
v{html.escape(str(test["champion"]["version"]))}</h1>
<p><b>Hypothesis.</b> {html.escape(test["hypothesis"])}</p>
"""


def _decision(report: dict[str, Any], colour: str) -> str:
    decision, look = report["decision"], report["look"]
    max_days = report["test"]["design"]["max_days"]
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in decision["reasons"])
    return f"""<div class="decision"><h2 style="color:{colour}">Decision: {decision["action"]}</h2>
<ul>{reasons}</ul><p>Look {look["number"]} at {look["time"]},
{look["fraction"]:.1%} of the planned sample, day {look["day"]:.1f}
of at most {max_days}{"; final look" if look["final"] else ""}.</p></div>
"""


def render_html(report: dict[str, Any]) -> str:
    """The report page (plots embedded), from the report's JSON."""
    test = report["test"]
    colour = COLOURS[report["decision"]["action"]]
    guardrails, segments = _guardrails_grid(report), _segments_grid(report)
    primary_rows = _primary_rows(report["primary"])
    plots = (
        _img(monitor_plot(report), "sequential monitoring")
        + _img(effects_plot(report), "effects")
        + _img(enrolment_plot(report), "enrolment")
    )
    body = f"""<h2>Plan (fixed when the test started)</h2>
{_plan_table(test)}
<h2>Primary metric</h2>
{_table(primary_rows)}
{plots}
<h2>Guardrails (one-sided: worse beyond the bound with significance stops the test)</h2>
{guardrails}
<h2>Sample ratio</h2>
{_srm_table(report["srm"])}
<h2>Segments ({html.escape(report["segment_correction"])} adjusted)</h2>
{segments}
{_img(segments_plot(report), "segments")}
<h2>Data</h2>
{_data_table(report["data"])}
<p style="color:#6e7781;font-size:.8rem">govml A/B report; the JSON beside this page holds
every number shown.</p>
</body></html>
"""
    return _head(test, colour) + _decision(report, colour) + body
