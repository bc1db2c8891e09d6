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

ENCODINGS = ("direct", "rate")
"""Input codings of ``model.encoding`` (:mod:`tdsnn.data.encoding`)."""

SURROGATES = ("atan", "sigmoid", "piecewise-quadratic", "fast-sigmoid")
"""Built-in surrogate gradients of ``model.surrogate`` (:data:`tdsnn.ops.surrogates.SURROGATES`
maps each to its class)."""

DATASETS = ("shapes", "digits", "mnist-5k", "mnist", "cifar10", "imagefolder")
"""Datasets of ``data.dataset`` (:mod:`tdsnn.data`)."""

OPTIMIZERS = ("adamw", "adam", "sgd")
"""Optimisers of ``optim.optimizer`` (:func:`tdsnn.step.build_optimizer`)."""

SCHEDULES = ("cosine", "constant", "step")
"""Learning-rate schedules of ``optim.schedule`` (:data:`tdsnn.step.SCHEDULES`)."""

SELECTIONS = ("best-val", "final")
"""What ``best.pt`` holds (``optim.select``): the epoch of the best selection accuracy, or the
last epoch (:class:`tdsnn.train.Trainer`)."""

LAYOUTS = ("retinotopic", "tiled", "grid")
"""Unit layouts of a cortical sheet (:mod:`tdsnn.sheet`)."""

SIMILARITY_METRICS = ("euclidean", "sqeuclidean", "cosine", "correlation")
"""Weight-similarity metrics of the topographic losses (:mod:`tdsnn.topo.similarity`)."""

BENCH_SUITES = ("lif", "pairs", "step", "cpu-step")
"""Suites of ``tdsnn bench --suite`` (:mod:`tdsnn.bench`)."""

POSITION_NULLS = ("within", "sheet")
"""Surrogate maps that move units (:mod:`tdsnn.analysis.nulls`): positions permuted within
each hypercolumn, or across the whole sheet."""

NULL_METRICS = {
    **{name: (name, POSITION_NULLS) for name in (
        "correlation_decay", "morans_i_response", "orientation_smoothness",
        "frequency_smoothness", "morans_i_frequency", "category_smoothness", "patches_mean")},
    "pinwheels.density": ("pinwheel_density", (*POSITION_NULLS, "field")),
    "pinwheels.spacing_mm": ("column_spacing_mm", (*POSITION_NULLS, "field")),
    "population_vector_length": ("population_vector_length", ("floor",)),
}  # fmt: skip
"""The map metrics with nulls (names as in an area's metrics, dotted for nested entries): their
key in ``metrics["nulls"]`` and their nulls (:func:`tdsnn.analysis.chance.add_nulls`); what
``tdsnn experiment`` measures accept as ``<metric>/null-z/<null>``."""

__all__ = [
    "BENCH_SUITES",
    "DATASETS",
    "ENCODINGS",
    "EVALUATE_REPEATS",
    "EVALUATE_TESTS",
    "LAYOUTS",
    "NULL_METRICS",
    "OPTIMIZERS",
    "POSITION_NULLS",
    "PROBE_KINDS",
    "SCHEDULES",
    "SELECTIONS",
    "SIMILARITY_METRICS",
    "SURROGATES",
]
