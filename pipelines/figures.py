"""Matplotlib figures as PNG: one way to save them for every report.

The figures are built without pyplot (``matplotlib.figure.Figure``; the Agg canvas renders
them), so no GUI backend and no global state. :func:`png` writes a figure's PNG bytes
(without the ``Software`` tag unless asked, so the same figure gives the same bytes with
any matplotlib build); :func:`png_base64` the same as base64 text; :func:`img_tag` an
``<img>`` element embedding it in a page.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any


def png(
    fig: Any,
    *,
    dpi: int = 100,
    tight_layout: bool = False,
    bbox_inches: str | None = None,
    software_tag: bool = False,
) -> bytes:
    """The figure as PNG bytes."""
    if tight_layout:
        fig.tight_layout()
    buffer = io.BytesIO()
    extra: dict[str, Any] = {} if software_tag else {"metadata": {"Software": None}}
    if bbox_inches is not None:
        extra["bbox_inches"] = bbox_inches
    fig.savefig(buffer, format="png", dpi=dpi, **extra)
    return buffer.getvalue()


def png_base64(fig: Any, **options: Any) -> str:
    """The figure as base64 PNG text (options as for :func:`png`)."""
    return base64.b64encode(png(fig, **options)).decode()


def img_tag(data: str, alt: str) -> str:
    """An ``<img>`` element showing base64 PNG data."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
