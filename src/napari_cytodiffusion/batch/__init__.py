"""Batch analysis of many smears, in this process or as dask.distributed tasks.

Per image: labels TIFF, cells CSV and summary JSON (with audit trail). For the cohort: one
CSV row per image and a log, both updated as each image finishes. Finished images (summary
present) are skipped on re-runs; a bad file fails alone with its error in the log; on dask
workers, an image that runs past the time limit fails alone too (its stack is logged and its
worker restarted).

The package follows the run: :mod:`.run` (options, the run), :mod:`.one_image` (what happens to
each image), :mod:`.executors` (in this process or on dask), :mod:`.cohort` (the table and what the
images say pooled), :mod:`.slides` (many slides in one run, one folder each).
"""

from __future__ import annotations

from .cohort import cohort_differential, pooled_differential, pooled_domain_check, scale_hint
from .one_image import analyze_one, iter_analyze_one, measure_one
from .run import analysis_options, iter_analysis, run_analysis
from .slides import iter_slides, run_slides, slide_groups

__all__ = [
    "analysis_options",
    "analyze_one",
    "cohort_differential",
    "iter_analysis",
    "iter_analyze_one",
    "iter_slides",
    "measure_one",
    "pooled_differential",
    "pooled_domain_check",
    "run_analysis",
    "run_slides",
    "scale_hint",
    "slide_groups",
]
