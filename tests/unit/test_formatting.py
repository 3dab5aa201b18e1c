"""The one home of report formatting: each style keeps its report's exact text and bytes."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipelines.figures import img_tag, png, png_base64
from pipelines.formatting import (
    cell,
    distinct_number,
    html_grid,
    html_pairs,
    markdown_table,
    message_number,
    short_number,
)


def test_cell_styles() -> None:
    assert [cell(v) for v in (None, True, 3, np.int64(4), 0.5, "x", {"b": 1})] == [
        "–",
        "yes",
        "3",
        "4",
        "0.5000",
        "x",
        "{'b': 1}",
    ]
    assert cell({"b": 1, "a": [1]}, containers=True) == '{"a": [1], "b": 1}'
    assert cell(1234567, thousands=True) == "1,234,567"
    assert cell(1234.5678, style="g") == "1235"
    assert cell(True, bools=False) == "True"
    assert cell(None, 3, none="n/a") == "n/a"
    assert cell(np.float32(0.25), 3) == "0.250"


def test_numbers_in_messages() -> None:
    assert short_number(5.0) == "5" and short_number(0.1234567) == "0.123457"
    assert short_number(pd.Timestamp("2026-01-02", tz="UTC")) == "2026-01-02T00:00:00+00:00"
    assert short_number(dt.datetime(2026, 1, 2)) == "2026-01-02T00:00:00"
    assert message_number(50000.0) == "50000" and message_number(0.01) == "0.01"
    assert message_number(2**200) == "an integer of 201 bits"
    assert distinct_number(0.12345) == "0.1235"
    assert distinct_number(0.123451, 0.123452) == "0.123451"


def test_tables() -> None:
    assert markdown_table(["a", "b"], [["1", "2"]]) == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]
    assert html_pairs([("x<y", "1")]) == "<table><tr><th>x&lt;y</th><td>1</td></tr></table>"
    assert (
        html_grid(["h"], [["1"], [("alarm", "alarm")]])
        == "<table><tr><th>h</th></tr><tr><td>1</td></tr>"
        '<tr><td class="alarm">alarm</td></tr></table>'
    )


def test_png_is_stable_and_embeddable() -> None:
    def figure() -> Figure:
        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([0, 1], [1, 0])
        return fig

    first, second = png(figure()), png(figure())
    assert first == second and first.startswith(b"\x89PNG")
    assert b"Software" not in first and b"Software" in png(figure(), software_tag=True)
    data = png_base64(figure(), dpi=50, tight_layout=True, bbox_inches="tight")
    assert (
        img_tag(data, 'a "b"') == f'<img alt="a &quot;b&quot;" src="data:image/png;base64,{data}">'
    )
