"""Names the command line offers as choices, kept free of heavy imports (no torch, numpy).

The parsers import these to build ``--help`` and check arguments without loading torch; the
modules that implement each choice import the same tuple from here.
"""

PROBE_KINDS = ("gratings", "categories", "dataset", "natural")
"""Probe sets of ``tdsnn record --stimuli`` (:mod:`tdsnn.data.probes`)."""

EVALUATE_TESTS = (
    "weight-noise",
    "input-noise",
    "pruning",
    "pruning-channels",
    "lesion",
    "adversarial",
    "representation",
)
"""Tests of ``tdsnn evaluate --tests`` (:mod:`tdsnn.evaluate.runner`), in the order they run."""

EVALUATE_REPEATS = 4
"""Noise draws per noisy level (the point's mean); ``benchmarks/evaluate_repeats.py`` measures
how many bring a run's draw-to-draw standard error under one accuracy point."""

__all__ = ["EVALUATE_REPEATS", "EVALUATE_TESTS", "PROBE_KINDS"]
