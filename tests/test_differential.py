"""The white-cell differential and its counting error."""

import pytest

from napari_cytodiffusion.differential import binomial_interval, differential, differential_line, percent_text
from napari_cytodiffusion.errors import InputError

PBC = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def test_binomial_interval_matches_rumkes_table():
    # Rümke's table (exact binomial 95 % limits): 5 of 100 cells → 1.6-11.3 %, 50 of 100 → 39.8-60.2 %
    lo, hi = binomial_interval(5, 100)
    assert round(100 * lo, 1) == 1.6 and round(100 * hi, 1) == 11.3
    lo, hi = binomial_interval(50, 100)
    assert round(100 * lo, 1) == 39.8 and round(100 * hi, 1) == 60.2
    assert binomial_interval(0, 100)[0] == 0.0 and round(binomial_interval(0, 100)[1], 4) == 0.0362
    assert binomial_interval(100, 100)[1] == 1.0
    assert binomial_interval(0, 0) == (0.0, 1.0)
    # more cells, a narrower interval around the same share
    assert binomial_interval(50, 500)[1] - binomial_interval(50, 500)[0] < hi - lo
    with pytest.raises(ValueError):
        binomial_interval(5, 3)


def test_differential_of_pbc_classes():
    counts = dict(
        neutrophil=60, lymphocyte=30, monocyte=5, eosinophil=3, basophil=1, ig=1, erythroblast=4, platelet=12
    )
    d = differential(counts, PBC)
    assert d["leukocytes"] == 100 and not d["imprecise"]
    assert d["percent"]["neutrophil"] == 60.0 and d["percent"]["ig"] == 1.0
    assert d["ci95"]["monocyte"] == [1.64, 11.28]
    assert d["per_100_leukocytes"] == {"erythroblast": {"count": 4, "value": 4.0}}
    assert d["not_counted"] == ["platelet"]
    assert sum(d["percent"].values()) == pytest.approx(100.0)
    line = differential_line(d)
    assert line.startswith("white-cell differential of 100 cells (95% CI): neutrophil 60% (50-70)")
    assert "erythroblast 4.0 per 100 white cells" in line and "imprecise" not in line
    few = differential({"neutrophil": 3, "lymphocyte": 1}, PBC)
    assert few["imprecise"] and differential_line(few).endswith("fewer than 100 white cells: imprecise")
    none = differential({"platelet": 4}, PBC)
    assert (
        none["leukocytes"] == 0 and none["percent"]["neutrophil"] is None and differential_line(none) is None
    )


def test_model_metadata_says_which_classes_are_white_cells():
    classes = ["seg", "lym", "nrbc", "artefact"]
    assert differential({"seg": 3}, classes) is None  # names it does not know: no differential
    extra = {"differential": {"leukocytes": ["seg", "lym", "gone"], "per_100_leukocytes": ["nrbc"]}}
    d = differential({"seg": 3, "lym": 1, "nrbc": 2, "artefact": 5}, classes, extra)
    assert list(d["percent"]) == ["seg", "lym"] and d["percent"]["seg"] == 75.0
    assert d["per_100_leukocytes"]["nrbc"]["value"] == 50.0 and d["not_counted"] == ["artefact"]


def test_summary_and_legend_carry_the_differential():
    import numpy as np
    import pandas as pd

    from napari_cytodiffusion.layers import legend_html
    from napari_cytodiffusion.pipeline import summarize

    cls = ["neutrophil"] * 6 + ["lymphocyte"] * 3 + ["platelet"] * 2 + ["erythroblast"]
    n = len(cls)
    table = pd.DataFrame(
        {
            "label": np.arange(1, n + 1),
            "class": cls,
            "classified": True,
            "flagged": False,
            "anomaly": 0.0,
        }
    )
    s = summarize(table, PBC)
    assert s["differential"]["leukocytes"] == 9 and s["differential"]["percent"][
        "neutrophil"
    ] == pytest.approx(66.67)
    html = legend_html(s, PBC, ["#000000"] * len(PBC))
    assert "white-cell differential of 9 cells (95% CI) — too few for a precise one" in html
    lo, hi = s["differential"]["ci95"]["neutrophil"]
    assert f"neutrophil: 6 — 67% ({percent_text(lo)}–{hi:.0f}%)" in html
    assert "erythroblast: 1 — 11 per 100 white cells" in html  # 11.1, shown without decimals above 10
    assert "platelet: 2 (16.7% of classified)" in html
    # with the model's class notes: what the counted classes hold, once each, for counted classes only
    from napari_cytodiffusion.model.registry import get_model
    from napari_cytodiffusion.model.scope import class_notes

    notes = class_notes(get_model("default").metadata)
    html = legend_html(s, PBC, ["#000000"] * len(PBC), notes)
    assert html.count(">neutrophil — band and segmented neutrophils together") == 1
    assert ">erythroblast — nucleated red cells</span>" in html
    assert ">platelet —" not in html and (">ig —" in html) == bool(s["counts"].get("ig"))


def test_ig_alert_is_a_share_of_the_white_cells():
    import numpy as np
    import pandas as pd

    from napari_cytodiffusion.pipeline import summarize

    def table(cls, flagged=()):
        n = len(cls)
        return pd.DataFrame(
            {
                "label": np.arange(1, n + 1),
                "class": cls,
                "classified": True,
                "flagged": np.isin(np.arange(n), list(flagged)),
                "anomaly": 0.0,
            }
        )

    # 1 IG in 41 white cells (2.4 %) with 20 platelets: 1.6 % of the classified cells, but above 2 % of the white
    s = summarize(table(["ig"] + ["neutrophil"] * 40 + ["platelet"] * 20), PBC)
    assert "ig: 1 unflagged call (2.4% of white cells)" in s["reasons"]
    s = summarize(table(["ig"] + ["neutrophil"] * 60), PBC)
    assert not any(r.startswith("ig:") for r in s["reasons"])  # 1.6 %
    # a flagged call is a star to review, not an alert (its neutrophil look-alikes are mostly flagged) ...
    cells = ["ig", "ig", "erythroblast"] + ["neutrophil"] * 40
    s = summarize(table(cells, flagged=[0, 1, 2]), PBC)
    assert not any(r.startswith(("ig:", "erythroblast:")) for r in s["reasons"])
    assert s["n_flagged"] == 3 and s["triage_thresholds"]["alert_count"] == "unflagged"
    # ... unless the triage counts every call
    s = summarize(table(cells, flagged=[0, 1, 2]), PBC, {"alert_count": "all"})
    assert "ig: 2 cells (4.8% of white cells)" in s["reasons"]
    assert "erythroblast: 1 cell (2.3%)" in s["reasons"]  # erythroblasts: a share of the classified cells
    with pytest.raises(InputError):
        summarize(table(cells), PBC, {"alert_count": "some"})


def test_alerts_pooled_over_fields_are_a_slides_not_a_fields():
    from napari_cytodiffusion.pipeline import DEFAULT_TRIAGE, alert_reasons

    # one field: 1 unflagged IG call among 2 white cells is "50 %"; a slide of 60 such fields with
    # 2 IG calls among 120 white cells is 1.7 %: no alert
    field = differential({"ig": 1, "neutrophil": 1}, PBC)
    assert alert_reasons({"ig": 1, "erythroblast": 0}, field, 3, DEFAULT_TRIAGE) == [
        "ig: 1 unflagged call (50.0% of white cells)"
    ]
    slide = differential({"ig": 2, "neutrophil": 118, "platelet": 40}, PBC)
    assert alert_reasons({"ig": 2, "erythroblast": 0}, slide, 160, DEFAULT_TRIAGE) == []
    assert alert_reasons({"ig": 3, "erythroblast": 1}, slide, 161, {"alert_count": "all"}) == [
        "erythroblast: 1 cell (0.6%)",
        "ig: 3 cells (2.5% of white cells)",
    ]


def test_a_users_corrections_are_counted():
    import numpy as np
    import pandas as pd

    from napari_cytodiffusion.pipeline import summarize

    cls = ["neutrophil"] * 40 + ["ig"] * 2 + ["platelet"]
    table = pd.DataFrame(
        {
            "label": np.arange(1, 44),
            "class": cls,
            "classified": True,
            "flagged": [False] * 40 + [True, True, False],
            "anomaly": 0.0,
            "corrected_class": [""] * 40 + ["neutrophil", "ig", "band"],
        }
    )
    s = summarize(table, PBC)
    # one IG call was a neutrophil; the other, flagged, the user confirmed: a sure call, so an alert
    assert s["counts"]["neutrophil"] == 41 and s["counts"]["ig"] == 1 and s["n_corrected"] == 3
    assert "ig: 1 unflagged call (2.3% of white cells)" in s["reasons"]
    # a class the user added (a band neutrophil) joins the counts and, by its name, the differential
    assert s["counts"]["band"] == 1 and s["counts"]["platelet"] == 0
    assert s["differential"]["leukocytes"] == 43 and "band" in s["differential"]["percent"]
    assert s["n_flagged"] == 2  # the model's flags stay as they were
