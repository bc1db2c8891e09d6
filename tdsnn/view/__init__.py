"""Interactive browser viewer of recordings (``tdsnn view``): per-area sheet maps, unit tuning
and rasters, region tuning, recordings side by side, spikes of a trial step by step.

- :func:`tdsnn.view.page.write_page`: one self-contained offline HTML file.
- :func:`tdsnn.view.server.make_server`: the same page from a loopback server, data on request.
- :mod:`tdsnn.view.data`: what the page shows, from :mod:`tdsnn.record` and
  :mod:`tdsnn.analysis`.
"""
