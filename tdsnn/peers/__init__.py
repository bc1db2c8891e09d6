"""spikingjelly and snntorch, the peer simulators: everything in tdsnn that knows them.

- :mod:`.detect`: which framework a module belongs to (by class name, importing neither),
  whether a call is one step or a whole sequence, what a neuron returns; :func:`import_peer`.
- :mod:`.neurons`: a tdsnn ``LIF``'s dynamics as a spikingjelly or snntorch neuron, and
  swapping a stack's neurons for them (the ``tdsnn bench`` peer variants).
- :mod:`.nir`: a NIR graph imported by each peer's own NIR importer and run step by step.
- :mod:`.roundtrip`: tdsnn's run against a peer's run of the same NIR graph, spike by spike
  (``tdsnn export --verify``).

Both peers are optional: ``pip install 'tdsnn[bench]'`` (and ``tdsnn[nir]`` for the round
trips); a missing one is a one-line error naming the extra.
"""
