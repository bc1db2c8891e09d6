"""Trained networks as NIR graphs and back (``tdsnn export RUN_DIR --format nir``).

- :mod:`.format`: the file: graph layout, LIF mapping, metadata keys, constants and queries.
- :mod:`.writer`: tdsnn -> NIR: :func:`~.writer.nir_graph`, :func:`~.writer.write_nir`,
  :func:`~.writer.export_run` (the command).
- :mod:`.reader`: NIR -> tdsnn: :func:`~.reader.read_nir` (graph and sheets),
  :func:`~.reader.from_nir` (a graph as a tdsnn module).

Round trips through spikingjelly's and snntorch's own NIR importers (``tdsnn export
--verify``) are :mod:`tdsnn.peers.roundtrip`. Recordings export to NWB and neo in
:mod:`tdsnn.record.nwb_neo`.
"""
