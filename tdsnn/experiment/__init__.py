"""Experiments: arms x paired seeds -> run directories, measures, statistics and a report.

- :mod:`.spec`: the ``SPEC.yaml`` format, checked before anything trains.
- :mod:`.comparisons`: how a spec compares its arms: pairs, contrasts, equivalence margins,
  published directions (primary or exploratory).
- :mod:`.runner`: ``tdsnn experiment``: worker processes, resume, results.
- :mod:`.worker`: one training or measuring job in its own process.
- :mod:`.measures`: what is measured on one run at one checkpoint.
- :mod:`.stats`: t intervals (BCa at n >= 10), paired tests, exact sign flips, TOST, power,
  Holm and Benjamini-Hochberg corrections (``scipy.stats``).
- :mod:`.results`: ``results.csv`` -> ``summary.json``, verdicts and ``report.md``;
  ``tdsnn experiment report DIR`` and ``--plan PILOT_DIR``.
- :mod:`.report`: figures and ``report.md``.
"""
