"""Robustness and representation tests of trained runs (``tdsnn evaluate``).

- :mod:`tdsnn.evaluate.perturb`: weight noise, pruning, input degradations, lesions, attacks.
- :mod:`tdsnn.evaluate.temporal`: spike jitter, deletion, insertion and circular shifts of
  the areas' spike trains, the stack run for another number of steps, early readout (LIF
  runs).
- :mod:`tdsnn.evaluate.representation`: effective dimensionality, activation variance,
  Moran's I, firing rates and synaptic operations.
- :mod:`tdsnn.evaluate.runner` and :mod:`tdsnn.evaluate.report`: the tests over levels and
  repeats, CSVs, figures and the report.

Trained models come from :func:`tdsnn.rundir.load_run`.
"""
