"""The report as one self-contained HTML page (pictures embedded; opens in any browser, offline)."""

from __future__ import annotations

from html import escape
from typing import Any

from .. import __version__
from .collect import ReportCell, ReportData

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1200px;
padding:0 1em;color:#222;background:#fff}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
.meta{color:#555;font-size:.9em} table{border-collapse:collapse;font-size:.9em}
td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left} th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{display:inline-block;height:.8em;vertical-align:middle}
.ci{display:inline-block;position:relative;width:200px;height:.8em;background:#f0f0f0;vertical-align:middle}
.ci span{position:absolute;top:0;height:100%}
.alert{background:#fdecea;border-left:4px solid #c62828;padding:.5em 1em;margin:.5em 0}
.note{background:#fff8e1;border-left:4px solid #f9a825;padding:.5em 1em;margin:.5em 0}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5em 1em;margin:.5em 0}
.gallery{display:flex;flex-wrap:wrap;gap:6px}
figure{margin:0;width:104px;font-size:.7em;line-height:1.25;color:#444;text-align:center;
overflow-wrap:anywhere}
figure img{width:96px;height:96px;border:4px solid transparent;border-radius:3px;display:block}
figure.flagged img{border-color:#c62828} figure.corrected img{border-color:#1565c0}
figure .missing{width:96px;height:96px;background:#eee;display:flex;align-items:center;justify-content:center}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:middle;margin-right:.3em}
footer{margin-top:2em;color:#666;font-size:.8em}
table.about th{white-space:nowrap;vertical-align:top;background:none}
body.only-marked #galleries figure:not(.flagged):not(.corrected){display:none}
@media print{figure{break-inside:avoid} .no-print{display:none}}
"""


def _anchor(cls: str) -> str:
    """An id for a class's gallery: ``"band neutrophil"`` → ``"class-band-neutrophil"``."""
    import re

    return "class-" + re.sub(r"[^A-Za-z0-9_-]+", "-", cls)


def _pct(p: float | None) -> str:
    from ..differential import percent_text

    return "–" if p is None else f"{percent_text(p)} %"


def _short(reason: str) -> str:
    """A flag reason in one or two words for a caption (the full words are in the tooltip)."""
    from ..classify.classifier import FLAG_WORDS

    short = {
        FLAG_WORDS["uncertain"]: "uncertain",
        FLAG_WORDS["anomalous"]: "unusual",
        FLAG_WORDS["size"]: "size",
    }
    return ", ".join(short.get(r.strip(), r.strip()) for r in reason.split(";") if r.strip())


def _figure(c: ReportCell, show_class: bool) -> str:
    kind = "flagged" if c.flagged and not c.corrected else "corrected" if c.corrected else ""
    where = f"{c.image} #{c.label}" if c.label > 0 else c.image  # a single-cell image has no label
    tip = [f"{c.image}, cell {c.label}" if c.label > 0 else c.image, f"called {c.predicted}"]
    if c.corrected:
        tip.append(f"corrected to {c.cls}")
    tip.append(f"P(correct) {c.p_correct:.2f}, anomaly {c.anomaly:.2f}")
    if c.runner_up:
        tip.append(f"next: {c.runner_up}")
    if c.flagged:
        tip.append(f"flagged: {c.reason}" if c.reason else "flagged")
    img = (
        f'<img src="{c.picture}" alt="{escape(c.cls)}">'
        if c.picture
        else '<div class="missing">no image</div>'
    )
    first = escape(c.cls) + (f" ← {escape(c.predicted)}" if c.corrected else "") if show_class else ""
    caption = "<br>".join(
        x
        for x in (
            first,
            f"P {c.p_correct:.2f}" + (f" · {escape(_short(c.reason))}" if c.flagged and c.reason else ""),
            escape(where),
        )
        if x
    )
    return (
        f'<figure class="{kind}" title="{escape(chr(10).join(tip))}">{img}'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _differential(data: ReportData) -> str:
    d = data.differential
    if not d or not d["leukocytes"]:
        return "<p>No white cells were counted.</p>"
    n = d["leukocytes"]
    rows = []
    for c, p in sorted(d["percent"].items(), key=lambda kv: -(kv[1] or 0)):
        lo, hi = d["ci95"][c]
        col = escape(data.colours.get(c, "#888"))
        rows.append(
            f"<tr><td><span class='swatch' style='background:{col}'></span>{escape(c)}</td>"
            f"<td class='num'>{d['counts'][c]}</td><td class='num'>{_pct(p)}</td>"
            f"<td class='num'>{_pct(lo)} – {_pct(hi)}</td><td><span class='ci'>"
            f"<span style='left:{lo * 2:.0f}px;width:{max((hi - lo) * 2, 1):.0f}px;background:{col};opacity:.35'></span>"
            f"<span style='left:{p * 2:.0f}px;width:2px;background:{col}'></span></span></td></tr>"
        )
    per100 = [
        f"{escape(c)}: {v['count']} ({_pct(v['value']).replace(' %', '')} per 100 white cells)"
        for c, v in d["per_100_leukocytes"].items()
    ]
    html = (
        f"<p>{n} white cell{'s' if n != 1 else ''} counted over {d['images']} image"
        f"{'s' if d['images'] != 1 else ''}; the 95 % interval is the counting error alone (exact binomial), "
        "not the classifier's.</p>"
        "<table><tr><th>class</th><th>cells</th><th>share</th><th>95 % interval</th><th>0 – 100 %</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    if per100:
        html += "<p>" + "; ".join(per100) + ".</p>"
    notes = data.model.get("class_notes") or {}
    held = [
        f"{escape(c)}: {escape(notes[c])}" for c in (*d["percent"], *d["per_100_leukocytes"]) if c in notes
    ]
    if held:  # what a class holds where it is wider than a haematologist's (no left shift counted)
        html += "<p>As the model learnt its classes: " + "; ".join(held) + ".</p>"
    if d["not_counted"]:
        html += "<p>Not part of the differential: " + ", ".join(map(escape, d["not_counted"])) + ".</p>"
    if d["imprecise"]:
        html += "<div class='note'>Fewer than 100 white cells: the differential is imprecise.</div>"
    return html


def _checks(data: ReportData) -> str:
    from ..classify.anomaly import shift_warning

    parts = []
    for alert in (data.differential or {}).get("alerts", []):
        parts.append(f"<div class='alert'><b>Alert</b> over all images: {escape(alert)}</div>")
    dc = data.domain_check
    if dc and dc.get("shifted"):
        parts.append(f"<div class='alert'><b>Domain check</b>: {escape(shift_warning(dc))}</div>")
    elif dc:
        over = "" if data.kind == "cells" else f" over {dc['images']} image{'s' if dc['images'] != 1 else ''}"
        parts.append(
            f"<div class='ok'>Domain check{over}: {dc['n_anomalous']} of {dc['n']} "
            f"classified cells unlike the training cells ({dc['expected_fraction']:.0%} expected, "
            f"p = {dc['p_value']:.2g}).</div>"
        )
    if data.model.get("warning"):
        parts.append(f"<div class='note'>{escape(data.model['warning'])}</div>")
    return "".join(parts)


def _image_link(im) -> str:
    """The image's name, linking the analysed file where it still is (to look at the whole field)."""
    from pathlib import Path

    path = ((im.summary.get("audit") or {}).get("input") or {}).get("path")
    if path and Path(path).is_file():
        return f"<a href='{escape(Path(path).resolve().as_uri())}'>{escape(im.name)}</a>"
    return escape(im.name)


def _image_table(data: ReportData) -> str:
    rows = []
    for im in data.images:
        s = im.summary
        verdict = s.get("verdict", "") if im.status == "ok" else "failed"
        why = "; ".join(s.get("reasons", []) or []) if im.status == "ok" else ""
        note = "; ".join(x for x in (why, im.error) if x)
        white = (s.get("differential") or {}).get("leukocytes", "")
        flagged = s.get("percent_flagged")
        rows.append(
            f"<tr><td>{_image_link(im)}</td><td>{escape(str(verdict))}</td>"
            f"<td class='num'>{s.get('n_cells', '')}</td><td class='num'>{s.get('n_classified', '')}</td>"
            f"<td class='num'>{white}</td>"
            f"<td class='num'>{'' if flagged is None else f'{flagged:.0f} %'}</td><td>{escape(note)}</td></tr>"
        )
    return (
        "<table><tr><th>image</th><th>verdict</th><th>cells</th><th>classified</th><th>white cells</th>"
        "<th>flagged</th><th>why / note</th></tr>" + "".join(rows) + "</table>"
    )


def _galleries(data: ReportData) -> str:
    out = [
        "<p>"
        + " · ".join(f"<a href='#{_anchor(k)}'>{escape(k)}</a> ({data.totals[k]})" for k in data.by_class)
        + "</p>"
    ]
    for cls, cells in data.by_class.items():
        total, flagged = data.totals[cls], data.flagged_totals[cls]
        col = escape(data.colours.get(cls, "#888"))
        more = f", {total - len(cells)} more not shown" if total > len(cells) else ""
        out.append(
            f"<h3 id='{_anchor(cls)}'><span class='swatch' style='background:{col}'></span>{escape(cls)}: "
            f"{total} cell{'s' if total != 1 else ''}, {flagged} flagged{more}</h3>"
            "<div class='gallery'>" + "".join(_figure(c, show_class=c.corrected) for c in cells) + "</div>"
        )
    return "".join(out)


def _meta(data: ReportData) -> str:
    m = data.model
    p: dict[str, Any] = data.parameters
    seg = p.get("segmentation") or ""  # a run's settings ({"model": ...}), or "given labels"
    seg = seg.get("model", "") if isinstance(seg, dict) else seg
    model = escape(str(m.get("name", "unknown model"))) + (
        f" ({escape(str(m['content_hash'])[:12])})" if m.get("content_hash") else ""
    )
    if m.get("about"):
        model = f"<a href='#about-model'>{model}</a>"
    bits = [f"model {model}", f"speed {escape(str(p.get('speed', '–')))}"]
    if seg:
        bits.append(f"segmentation {escape(str(seg))}")
    if p.get("red_cell_px"):
        bits.append(f"red cell {float(p['red_cell_px']):.1f} px")
    return " · ".join(bits)


def _about(data: ReportData) -> str:
    """The model's card (:func:`~napari_cytodiffusion.model.scope.about_model`), when the model of
    the results could be read."""
    items = data.model.get("about") or []
    if not items:
        return ""
    rows = "".join(f"<tr><th>{escape(str(h))}</th><td>{escape(str(t))}</td></tr>" for h, t in items)
    return (
        "<h2 id='about-model'>About the model</h2><p>What the model of these results is for, what it learnt "
        "from, what it never learnt and where it was measured to fall short: read its calls with this in "
        f"mind.</p><table class='about'>{rows}</table>"
    )


def _what(data: ReportData) -> str:
    """``"12 images (needs review 3, routine 9)"``, or ``"240 cell images"`` for single-cell images."""
    if data.kind == "cells":
        n = sum(data.totals.values())
        return f"{n} cell image{'s' if n != 1 else ''}"
    ok = [im for im in data.images if im.status == "ok"]
    n_fail = len(data.images) - len(ok)
    verdicts: dict[str, int] = {}
    for im in ok:
        v = str(im.summary.get("verdict", "?"))
        verdicts[v] = verdicts.get(v, 0) + 1
    tally = ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) + (
        f", failed {n_fail}" if n_fail else ""
    )
    return f"{len(data.images)} image{'s' if len(data.images) != 1 else ''} ({escape(tally)})"


def _up(data: ReportData) -> str:
    """A link back to the overview when this folder is one slide of an ``analyze --by-folder`` run."""
    import pandas as pd

    from ..batch.slides import SLIDES_TABLE

    folder = data.folder.resolve()
    for depth, parent in enumerate(folder.parents, 1):  # a slide may be nested (patient7/slide2)
        if (parent / SLIDES_TABLE).is_file():
            try:
                slides = {str(x) for x in pd.read_csv(parent / SLIDES_TABLE)["slide"]}
            except (OSError, ValueError, KeyError):
                return ""
            if folder.relative_to(parent).as_posix() not in slides:
                return ""
            return f"<p class='meta no-print'><a href='{'../' * depth}report.html'>← all slides</a></p>"
        if depth == 4:
            break
    return ""


def render(data: ReportData) -> str:
    """The page for :class:`ReportData`."""
    smears = data.kind != "cells"
    review = (
        "<p>The flagged cells no one has corrected yet, most useful to look at first (least sure or most unlike "
        f"the training cells); {len(data.review)} of {data.n_review} shown. A red frame marks a flagged call, "
        "a blue one a corrected call; hover over a cell for its details.</p>"
        "<div class='gallery'>" + "".join(_figure(c, show_class=True) for c in data.review) + "</div>"
        if data.review
        else "<p>No flagged cell is waiting for review.</p>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>CytoDiffusion report: {escape(data.folder.name)}</title><style>{_CSS}</style></head><body>"
        + _up(data)
        + f"<h1>CytoDiffusion report: {escape(data.folder.name)}</h1>"
        f"<p class='meta'>{_what(data)} · "
        f"{_meta(data)} · made {escape(data.created)} by napari-cytodiffusion {escape(__version__)}</p>"
        + _checks(data)
        + "<h2>White-cell differential</h2>"
        + _differential(data)
        + "<h2>Review first</h2>"
        + review
        + "<h2>Cells by class</h2><p>Flagged cells first"
        + (", each outlined as the segmentation found it." if smears else ".")
        + " <label class='no-print'><input type='checkbox' onchange=\"document.body.classList.toggle("
        "'only-marked', this.checked)\"> show only flagged and corrected cells</label></p>"
        + "<div id='galleries'>"
        + _galleries(data)
        + "</div>"
        + ("<h2>Images</h2>" + _image_table(data) if smears else "")
        + _about(data)
        + "<footer>Calls of a generative classifier for research use, not a diagnostic device: every result needs "
        "a qualified person's review. The differential's interval covers the counting error only. Results folder: "
        f"{escape(str(data.folder))}.</footer></body></html>"
    )
