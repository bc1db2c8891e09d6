"""Topography analysis of recordings (DESIGN section 11; ``tdsnn analyze``).

- :mod:`tdsnn.analysis.maps`: the metrics as functions on plain arrays (tuning, smoothness,
  correlation and synchrony against distance, Moran's I, orientation maps, column spacing
  and pinwheels, category selectivity and patches).
- :mod:`tdsnn.analysis.topography`: the metrics of a recording, area by area.
- :mod:`tdsnn.analysis.figures` and :mod:`tdsnn.analysis.report`: figures, ``metrics.json``
  and ``report.md``.

Recordings are read only through :func:`tdsnn.record.open`.
"""
