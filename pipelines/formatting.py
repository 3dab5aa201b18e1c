"""Numbers and values as reports and messages show them, and the tables that hold them.

One home for the text formatting of every report (model card, evidence pack, A/B and
monitoring pages, fairness and data-quality reports, gate and input messages). Each
function keeps the exact output its report has always had (reports are compared and
archived byte for byte), so the styles differ where the reports differ:

* :func:`cell`: a value in a report table (``–`` for none, ``yes``/``no`` for booleans,
  fixed or general digits for floats, optional thousands separators and JSON for
  containers);
* :func:`short_number`: a bound or an observed value in a data-quality message;
* :func:`message_number`: a number in an input-validation message;
* :func:`distinct_number`: a number with just enough digits to tell it from another;
* :func:`markdown_table`, :func:`html_pairs`, :func:`html_grid`: tables.

Pure text: no matplotlib, no I/O (figures are :mod:`pipelines.figures`).
"""

from __future__ import annotations

import datetime as dt
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

NONE = "–"


def cell(
    value: Any,
    digits: int = 4,
    *,
    style: str = "f",
    none: str = NONE,
    bools: bool = True,
    thousands: bool = False,
    containers: bool = False,
) -> str:
    """A value as a report table cell.

    ``None`` is ``none``; a boolean is ``yes``/``no`` (or ``True``/``False`` when ``bools``
    is false); an integer is plain (``1,234`` with ``thousands``); a float has ``digits``
    digits in ``style`` (``f`` fixed, ``g`` general); a dict or list is sorted JSON when
    ``containers`` is true; anything else is ``str(value)``.
    """
    if value is None:
        return none
    if isinstance(value, bool | np.bool_):
        return ("yes" if value else "no") if bools else str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}" if thousands else str(int(value))
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}{style}}"
    if containers and isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def short_number(value: Any) -> str:
    """A bound or observed value: whole floats without ``.0``, else 6 significant digits;
    timestamps in ISO 8601."""
    if isinstance(value, float | np.floating):
        f = float(value)
        if f.is_integer() and abs(f) < 1e15:
            return str(int(f))
        return f"{f:.6g}"
    if isinstance(value, dt.datetime):  # pandas' Timestamp is one too
        import pandas as pd  # (lazily: the model server imports this module, not pandas)

        return pd.Timestamp(value).isoformat()
    return str(value)


def message_number(x: float) -> str:
    """A number as a message shows it (``50000``, ``0.01``, never thousands of digits)."""
    if isinstance(x, int | np.integer):
        x = int(x)
        return str(x) if x.bit_length() <= 128 else f"an integer of {x.bit_length()} bits"
    x = float(x)
    if x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)


def distinct_number(value: float, other: float | None = None) -> str:
    """Short number; more digits when needed to tell it apart from ``other``."""
    for digits in range(4, 13):
        text = f"{value:.{digits}g}"
        if other is None or value == other or text != f"{other:.{digits}g}":
            return text
    return repr(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def html_pairs(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column HTML table: an escaped name, then its value (already HTML)."""
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def html_grid(head: Sequence[str], rows: Iterable[Sequence[str | tuple[str, str]]]) -> str:
    """An HTML table: escaped column names, then rows of cells (already HTML); a cell given
    as ``(html, css_class)`` carries that class."""

    def td(item: str | tuple[str, str]) -> str:
        if isinstance(item, tuple):
            return f'<td class="{item[1]}">{item[0]}</td>'
        return f"<td>{item}</td>"

    top = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(td(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{top}</tr>{body}</table>"
