"""What a model is for, what it learnt from and what it cannot tell: the card a haematologist reads.

A classifier with a fixed set of classes calls every cell one of them. Whoever reads its calls
needs to know which cells it has never seen, how well each class measured, and where it was shown
to fail, before trusting a differential made with it. This module builds that card from a model's
metadata alone (no weights are read):

- what every model has: its classes, the training data its metadata names, the validation record
  (balanced accuracy and recall per class), and the fact that a cell of any other kind is called
  one of the classes;
- what whoever trained it wrote in ``extra["scope"]`` (see :data:`SCOPE_KEYS`): intended use, the
  population and laboratory of the training cells, what each class holds, cell kinds it never
  learnt, and measured limits (other laboratories, a class left out of training, resolution);
- for a LoRA adapter, that it is one, of which base model, on how many cells; a cell kind the base
  model never learnt that the adapter added as a class (``blast``) is no longer listed as not learnt.

The shipped models carry a scope written from this project's measurements (docs/measurements.md).
"""

from __future__ import annotations

import math
import os
from typing import Any

#: keys of ``extra["scope"]``, each optional
SCOPE_KEYS = (
    "intended_use",  # str: what the model is for
    "population",  # str: whose cells, which laboratory, instrument and stain
    "class_notes",  # {class: str}: what a class holds (e.g. band and segmented neutrophils together)
    "not_learnt",  # [str]: cell kinds a user will meet that the model never learnt
    "limits",  # [str]: measured limits, each with its figure
)
#: what a model is for when its metadata does not say
DEFAULT_USE = "research and teaching, not a diagnostic device: every call needs a qualified person's review"
OTHER_CELLS = (
    "a cell of any other kind is called one of these classes; the flag (uncertain or unlike the "
    "training cells) catches such cells only in part"
)


def _strings(value: Any) -> list[str]:
    """A metadata list of strings, tolerant of a single string; anything else gives nothing."""
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v).strip()]
    return []


def _singular(name: str) -> str:
    """``"Plasma cells"`` → ``"plasma cell"``: class names and cell kinds compared."""
    name = " ".join(name.lower().split())
    return name[:-1] if name.endswith("s") else name


def _trained_on(meta) -> str:
    training = meta.training or {}
    data = training.get("data") or {}
    dataset = training.get("dataset") or data.get("dataset")
    if not dataset:
        return "not recorded in the model's metadata"
    n = data.get("n_images")
    licence = training.get("licence") or data.get("licence")
    return (
        str(dataset)
        + (f", {int(n):,} images" if isinstance(n, int | float) else "")
        + (f" ({licence})" if licence else "")
    )


def _number(value: Any) -> float | None:
    """A finite number from the metadata, else ``None`` (a malformed record is left out, not fatal)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _measured(meta) -> str | None:
    v = meta.validation or {}
    balanced = _number(v.get("balanced_accuracy"))
    if balanced is None:
        return None
    where = str(v.get("dataset") or "validation").split(" (")[0].strip()
    n = _number(v.get("n"))
    text = f"{where}{f' ({int(n):,} cells)' if n else ''}: balanced accuracy {balanced:.3f}"
    recall = v.get("per_class_recall")
    if isinstance(recall, dict):
        known = {str(c): _number(r) for c, r in recall.items() if _number(r) is not None}
        weakest = sorted(known.items(), key=lambda kv: kv[1])
        if weakest:
            text += "; recall per class, weakest first: " + ", ".join(f"{c} {r:.3f}" for c, r in weakest)
    wrong = _number(v.get("flagged_share_of_wrong_calls"))
    right = _number(v.get("flagged_share_of_right_calls"))
    if wrong is not None and right is not None:
        text += f"; flagged: {wrong:.0%} of the wrong calls, {right:.0%} of the right ones".replace("%", " %")
    confusions = _confusions(v.get("confusion_matrix"), meta.classes)
    if confusions:
        text += "; most frequent confusions: " + ", ".join(
            f"{a} called {b} {rate:.1%}".replace("%", " %") for a, b, rate in confusions
        )
    return text


def _confusions(
    matrix: Any, classes: list[str], most: int = 3, at_least: float = 0.02
) -> list[tuple[str, str, float]]:
    """The ``most`` largest shares of a class's cells called another class (rows of the
    validation record's confusion matrix, true class by call), each at least ``at_least``."""
    if not isinstance(matrix, list) or len(matrix) != len(classes):
        return []
    if not all(isinstance(row, list) and len(row) == len(classes) for row in matrix):
        return []
    rows = [[_number(x) for x in row] for row in matrix]
    if any(x is None or x < 0 for row in rows for x in row):
        return []
    shares = [
        (rows[i][j] / sum(rows[i]), classes[i], classes[j])
        for i in range(len(classes))
        for j in range(len(classes))
        if i != j and sum(rows[i]) > 0 and rows[i][j] > 0
    ]
    return [(a, b, rate) for rate, a, b in sorted(shares, reverse=True)[:most] if rate >= at_least]


def class_notes(meta) -> dict[str, str]:
    """What each class of a model holds, where its scope says (``{"neutrophil": "band and ..."}``)."""
    scope = meta.extra.get("scope") if isinstance(meta.extra.get("scope"), dict) else {}
    notes = scope.get("class_notes") if isinstance(scope.get("class_notes"), dict) else {}
    return {c: str(notes[c]) for c in meta.classes if isinstance(notes.get(c), str) and notes[c].strip()}


def about_model(meta) -> list[tuple[str, str]]:
    """The card of a model (a :class:`~napari_cytodiffusion.model.folder.ModelMetadata`) as
    ``(heading, text)`` pairs, in reading order: intended use, learnt from, adapted (adapters),
    classes, other cells, not learnt, measured, then one ``limit`` per measured limit."""
    scope = meta.extra.get("scope") if isinstance(meta.extra.get("scope"), dict) else {}
    items = [("intended use", str(scope.get("intended_use") or DEFAULT_USE))]
    population = scope.get("population")
    items.append(("learnt from", _trained_on(meta) + (f"; {population}" if population else "")))
    adapter = meta.extra.get("adapter")
    if isinstance(adapter, dict):
        base = (adapter.get("base_model") or {}).get("name", "?")
        counts = (adapter.get("finetune") or {}).get("class_counts") or {}
        n = int(sum(_number(c) or 0 for c in counts.values()))
        items.append(
            (
                "adapted",
                f"a LoRA adapter of {base}, fine-tuned on {n} labelled cells; the classes, calibration "
                "and figures below are the adapter's, the rest is the base model's",
            )
        )
    notes = class_notes(meta)
    listed = ", ".join(c + (f" ({notes[c]})" if c in notes else "") for c in meta.classes)
    items.append(("classes", f"{len(meta.classes)}: {listed}"))
    items.append(("other cells", OTHER_CELLS))
    # a kind the model has since learnt (an adapter's new class "blast") is no longer "not learnt"
    known = {_singular(c) for c in meta.classes}
    not_learnt = [k for k in _strings(scope.get("not_learnt")) if _singular(k) not in known]
    if not_learnt:
        items.append(("not learnt", ", ".join(not_learnt)))
    measured = _measured(meta)
    items.append(("measured", measured or "no validation record in the model's metadata"))
    items += [("limit", text) for text in _strings(scope.get("limits"))]
    return items


def about_text(items: list[tuple[str, str]]) -> str:
    """The card as text, one ``heading: text`` line per item."""
    return "\n".join(f"{heading}: {text}" for heading, text in items)


def model_about(spec: str | os.PathLike | None = None) -> list[tuple[str, str]]:
    """:func:`about_model` of a model or adapter folder, or a model by name (nothing is downloaded).

    Raises
    ------
    ModelError
        When the folder is not a readable model or adapter folder, or an adapter's base model
        cannot be found.
    """
    from ..adapt.adapter import adapted_metadata, find_base, is_adapter, read_adapter_metadata
    from .folder import read_metadata
    from .registry import resolve_model

    folder = resolve_model(spec, download=False)
    if is_adapter(folder):
        meta = read_adapter_metadata(folder)
        base = read_metadata(find_base(meta, folder))
        return about_model(adapted_metadata(base, meta, folder))
    return about_model(read_metadata(folder))
