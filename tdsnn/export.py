"""The NIR functions README.md documents as ``from tdsnn.export import ...``; kept only for that
import. The code lives in :mod:`tdsnn.nir.writer`, :mod:`tdsnn.nir.reader` and
:mod:`tdsnn.peers.roundtrip`."""

from tdsnn.nir.reader import from_nir, read_nir
from tdsnn.nir.writer import nir_graph, write_nir
from tdsnn.peers.roundtrip import round_trip

__all__ = ["from_nir", "nir_graph", "read_nir", "round_trip", "write_nir"]
