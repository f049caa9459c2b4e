"""The overview page of a run with one slide per folder: one row per slide, linking its own page."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .. import __version__
from .html import _CSS


def _num(v: Any) -> str:
    from ..differential import percent_text

    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if f != f else percent_text(f)


def render_slides(folder: Path, rows: list[dict[str, Any]]) -> str:
    """The page for the rows of ``slides.csv`` (:func:`~napari_cytodiffusion.batch.slides.slide_row`)."""
    classes = [k[4:] for k in (rows[0] if rows else {}) if k.startswith("pct_")]
    per100 = [k for k in (rows[0] if rows else {}) if k.endswith("_per_100_white_cells")]
    body = []
    for r in rows:
        shifted = str(r.get("unlike_training_cells")) == "True"
        alerts = str(r.get("alerts") or "")
        mark = " style='background:#fdecea'" if alerts or shifted else ""
        name = escape(str(r["slide"]))
        link = f"<a href='{escape(quote(str(r['report'])))}'>{name}</a>" if r.get("report") else name
        shares = sorted(((c, _float(r.get(f"pct_{c}"))) for c in classes), key=lambda cp: -cp[1])
        diff = " · ".join(f"{escape(c)} {_num(p)} %" for c, p in shares if p > 0)
        extra = " · ".join(
            f"{escape(k.replace('_per_100_white_cells', ''))} {_num(r.get(k))} per 100"
            for k in per100
            if _num(r.get(k)) not in ("", "0.0")
        )
        domain = escape(str(r.get("domain") or ""))
        body.append(
            f"<tr{mark}><td>{link}</td><td class='num'>{r.get('images', '')}</td>"
            f"<td class='num'>{r.get('failed', '')}</td><td class='num'>{r.get('fields_needing_review', '')}</td>"
            f"<td class='num'>{_white(r.get('white_cells'))}</td><td>{diff}{'<br>' + extra if extra else ''}</td>"
            f"<td>{escape(alerts)}</td><td>{'<b>shifted</b>: ' if shifted else ''}{domain}</td></tr>"
        )
    n = len(rows)
    marked = sum(
        1 for r in rows if str(r.get("alerts") or "") or str(r.get("unlike_training_cells")) == "True"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>CytoDiffusion slides: {escape(folder.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>CytoDiffusion slides: {escape(folder.name)}</h1>"
        f"<p class='meta'>{n} slide{'s' if n != 1 else ''}, {marked} with alerts or a domain shift (red) · made "
        f"{time.strftime('%Y-%m-%d %H:%M')} by napari-cytodiffusion {escape(__version__)}</p>"
        "<p>Each slide was analysed on its own; its name opens its page (differential with intervals, cells to "
        "review, every cell by class). Shares are of the slide's white cells; under 100 white cells a "
        "differential is imprecise.</p>"
        "<table><tr><th>slide</th><th>images</th><th>failed</th><th>fields needing review</th>"
        "<th>white cells</th><th>differential</th><th>alerts</th><th>domain check</th></tr>"
        + "".join(body)
        + "</table><footer>Calls of a generative classifier for research use, not a diagnostic device: every "
        f"result needs a qualified person's review. Results folder: {escape(str(folder))}.</footer></body></html>"
    )


def _float(v: Any) -> float:
    """A number from a CSV cell; 0 for an empty one (a slide without white cells)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return 0.0
    return 0.0 if f != f else f


def _white(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return "" if f != f else str(int(f))
