"""Round trips through the peers: tdsnn's run of a network against a peer's run of its NIR
export, spike by spike at every LIF layer and step, and logit by logit.

:func:`round_trip` runs a model and a peer's import of its graph (:mod:`tdsnn.peers.nir`) on
the same images and returns a :class:`RoundTrip`; :func:`verify_export` is
``tdsnn export --verify``: a written file read back by every installed peer.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from tdsnn.areas import AreaStack, ReLUUnits
from tdsnn.errors import ConfigError
from tdsnn.neurons import LIF
from tdsnn.nir.reader import read_nir
from tdsnn.peers.detect import split_output
from tdsnn.peers.nir import PEERS, Trace, load_peer, peer_trace

__all__ = [
    "LayerAgreement",
    "RoundTrip",
    "compare_traces",
    "round_trip",
    "tdsnn_trace",
    "verify_export",
]


@torch.no_grad()
def tdsnn_trace(model: AreaStack, images: Tensor, *, seed: int = 0) -> Trace:
    """Run ``model`` on ``images`` ``[B, C, H, W]``, recording every LIF layer's spikes.

    ``inputs`` is what the graph's input node receives at each step: the image for direct
    encoding, the coded spikes (drawn under ``seed``, the same draws the model used) otherwise.
    """
    spikes: dict[str, Tensor] = {}
    hooks = [
        module.register_forward_hook(
            lambda _m, _a, out, name=name: spikes.__setitem__(name, split_output(out)[0].detach())
        )
        for name, module in model.named_modules()
        if isinstance(module, (LIF, ReLUUnits))
    ]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            inputs = model.encode(images)
            torch.manual_seed(seed)
            logits = model(images).logits
    finally:
        for hook in hooks:
            hook.remove()
    return Trace(inputs, spikes, logits)


@dataclass(frozen=True)
class LayerAgreement:
    """Spikes of one LIF layer in two runs: ``values`` compared, ``mismatches`` differing,
    ``first_step`` the first step (0-based) with a difference, or None."""

    layer: str
    values: int
    mismatches: int
    first_step: int | None


@dataclass(frozen=True)
class RoundTrip:
    """How a peer's run of the exported graph agrees with tdsnn's on the same inputs."""

    simulator: str
    images: int
    timesteps: int
    layers: tuple[LayerAgreement, ...]  # in graph order
    max_logit_diff: float
    max_abs_logit: float
    same_predictions: int

    @property
    def spikes_equal(self) -> bool:
        return all(layer.mismatches == 0 for layer in self.layers)

    @property
    def spike_agreement(self) -> float:
        values = sum(layer.values for layer in self.layers)
        return 1.0 - sum(layer.mismatches for layer in self.layers) / max(values, 1)

    @property
    def first_mismatch(self) -> tuple[int, str] | None:
        """(step, layer) of the earliest differing spike: the first step, then graph order."""
        found = [(layer.first_step, i) for i, layer in enumerate(self.layers) if layer.first_step
                 is not None]  # fmt: skip
        if not found:
            return None
        step, i = min(found)
        return step, self.layers[i].layer

    def summary(self) -> str:
        spikes = sum(layer.values for layer in self.layers)
        wrong = sum(layer.mismatches for layer in self.layers)
        where = self.first_mismatch
        first = "" if where is None else f", first at step {where[0]} in {where[1]}"
        return (
            f"{self.simulator}: {self.images} images x {self.timesteps} steps, "
            f"{len(self.layers)} LIF layers: {spikes - wrong}/{spikes} spike values equal "
            f"({wrong} differ{first}); same prediction for {self.same_predictions}/"
            f"{self.images}; max |logit difference| {self.max_logit_diff:.3g} "
            f"(max |logit| {self.max_abs_logit:.3g})"
        )


def compare_traces(simulator: str, reference: Trace, other: Trace) -> RoundTrip:
    """Spike by spike and logit by logit agreement of ``other`` with ``reference``."""
    layers = []
    for name, ref in reference.spikes.items():
        if name not in other.spikes:
            raise ConfigError(f"{simulator}: no spikes recorded for layer {name}")
        got = other.spikes[name].reshape(ref.shape).to(ref.dtype)
        differ = (got != ref).reshape(ref.shape[0], -1).any(dim=1)  # [T]
        steps = differ.nonzero().flatten()
        layers.append(
            LayerAgreement(
                name,
                ref.numel(),
                int((got != ref).sum()),
                int(steps[0]) if len(steps) else None,
            )
        )
    diff = (other.logits.to(reference.logits.dtype) - reference.logits).abs()
    same = int((other.logits.argmax(1) == reference.logits.argmax(1)).sum())
    return RoundTrip(
        simulator,
        int(reference.logits.shape[0]),
        int(reference.inputs.shape[0]),
        tuple(layers),
        float(diff.max()) if diff.numel() else 0.0,
        float(reference.logits.abs().max()) if diff.numel() else 0.0,
        same,
    )


def _merge(results: list[RoundTrip]) -> RoundTrip:
    """Batches of one comparison as one: counts add, first steps and maxima take the least /
    the largest."""
    first = results[0]
    layers = []
    for i, layer in enumerate(first.layers):
        parts = [r.layers[i] for r in results]
        steps = [p.first_step for p in parts if p.first_step is not None]
        layers.append(
            LayerAgreement(
                layer.layer,
                sum(p.values for p in parts),
                sum(p.mismatches for p in parts),
                min(steps) if steps else None,
            )
        )
    return RoundTrip(
        first.simulator,
        sum(r.images for r in results),
        first.timesteps,
        tuple(layers),
        max(r.max_logit_diff for r in results),
        max(r.max_abs_logit for r in results),
        sum(r.same_predictions for r in results),
    )


def round_trip(
    model: AreaStack,
    graph,
    images: Tensor,
    simulator: str,
    *,
    batch_size: int = 64,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> RoundTrip:
    """Run ``model`` and ``simulator``'s import of ``graph`` on ``images`` ``[N, C, H, W]``
    (in batches) and compare spikes at every LIF layer and logits. ``model`` is put in eval
    mode and converted to ``dtype``; batch k of rate-coded inputs is drawn with ``seed + k``."""
    model = model.eval().to(dtype)
    net = load_peer(graph, simulator, dtype=dtype)
    results = []
    for k, batch in enumerate(images.to(dtype).split(batch_size)):
        reference = tdsnn_trace(model, batch, seed=seed + k)
        results.append(
            compare_traces(simulator, reference, peer_trace(net, graph, reference.inputs))
        )
    return _merge(results)


def verify_export(
    run_dir: str | Path,
    path: str | Path,
    *,
    which: str = "best",
    images: int = 256,
    batch_size: int = 64,
) -> list[str]:
    """``tdsnn export --verify N``: the NIR file ``path`` read back by every installed peer
    (:data:`PEERS`), run on the first ``images`` test images of ``run_dir`` and compared with
    checkpoint ``which``; one :meth:`RoundTrip.summary` line per peer."""
    from tdsnn.data import build_test_split
    from tdsnn.rundir import load_run

    trained = load_run(run_dir, which)
    data = trained.config.data
    size = min(images, data.test_size) if data.test_size is not None else images
    test, _ = build_test_split(
        data.dataset,
        data_root=data.data_root,
        image_size=data.image_size,
        seed=trained.config.run.seed,
        test_size=size,
    )
    batch = torch.stack([torch.as_tensor(test[i][0]) for i in range(min(size, len(test)))])
    graph = read_nir(path).graph
    lines = []
    for simulator in PEERS:
        if (
            importlib.util.find_spec(simulator) is None
            or importlib.util.find_spec("nirtorch") is None
        ):
            lines.append(f"{simulator}: not installed (pip install 'tdsnn[test]')")
            continue
        try:
            result = round_trip(trained.model, graph, batch, simulator, batch_size=batch_size)
        except (AssertionError, ValueError, NotImplementedError) as exc:  # the importer refuses
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            lines.append(f"{simulator}: its NIR import refuses this file: {first}")
            continue
        lines.append(result.summary())
    return lines
