"""Experiments: arms x paired seeds -> run directories, measures, statistics and a report.

- :mod:`.spec`: the ``SPEC.yaml`` format, checked before anything trains.
- :mod:`.runner`: ``tdsnn experiment``: worker processes, resume, results.
- :mod:`.worker`: one training or measuring job in its own process.
- :mod:`.measures`: what is measured on one run at one checkpoint.
- :mod:`.stats`: bootstrap CIs, paired differences and TOST (``scipy.stats``).
- :mod:`.report`: figures and ``report.md``.
"""
