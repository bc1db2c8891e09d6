"""What a recording holds, apart from how it is laid out on disk (:mod:`tdsnn.record.hdf5`).

The recorder builds a :class:`RecordingMeta` once and one :class:`TrialBatch` per batch of
stimuli; the HDF5 writer stores them and the reader gives the same objects back.

Time: every trial lasts ``timesteps`` steps of ``dt_ms``; trials are laid end to end, trial
``k`` covering ``[k·T·dt, (k+1)·T·dt)`` ms, and a spike at step ``t`` of trial ``k`` has the
timestamp ``(k·T + t)·dt`` ms. Units: a unit's ``node_id`` is its row-major index
``c·H·W + h·W + w`` in its area's output ``[C, H, W]`` (DESIGN section 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["AreaBatch", "AreaNodes", "RecordingMeta", "TrialBatch"]


@dataclass(frozen=True)
class AreaNodes:
    """One recorded area: its units and where they sit on the cortical sheet.

    Attributes:
        name: area name, e.g. ``"V1"``.
        shape: ``(C, H, W)`` of the area's output; ``num_units = C·H·W``.
        positions_mm: ``float32 [N, 2]`` sheet positions ``(x, y)`` in mm, row = node id.
        side_mm, neighbourhood_mm, layout, optimized: the sheet's
            (:class:`tdsnn.sheet.Sheet`).
        membrane_units: ``int64 [n_rec]`` ascending node ids whose membrane potential is
            recorded (empty: none).
    """

    name: str
    shape: tuple[int, int, int]
    positions_mm: np.ndarray
    side_mm: float
    neighbourhood_mm: float
    layout: str
    optimized: bool = False
    membrane_units: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_units(self) -> int:
        c, h, w = self.shape
        return c * h * w


@dataclass(frozen=True)
class RecordingMeta:
    """Everything about a recording except its trials.

    Attributes:
        areas: the recorded areas in ventral order.
        timesteps: T, simulation steps per trial.
        dt_ms: length of one step (ms).
        stimuli_kind: ``gratings``, ``categories``, ``dataset`` or ``natural``.
        stimuli: the probe table (:class:`tdsnn.data.probes.ProbeSet` ``params``), one row per
            stimulus: ``label``, ``orientation_deg``, ``cycles_per_image``, ``phase_deg``.
        class_names: names of the stimulus labels.
        config: the trained run's config (:meth:`tdsnn.config.RunConfig.to_dict`).
        source: where the model came from (``run_dir``, ``checkpoint``, ``epoch``, ...).
        versions: tdsnn, torch, numpy, h5py versions of the writer.
        membrane_units_label: what the membrane traces hold (the model's dimensionless
            potential: ``a.u.``, threshold ``v_threshold``).
        responses: ``spikes`` (LIF units: spike events and per-trial spike counts) or
            ``rates`` (ReLU units, ``model.neuron: relu``: each unit's activation per trial,
            float32, in place of the counts; no spike events).
    """

    areas: tuple[AreaNodes, ...]
    timesteps: int
    dt_ms: float
    stimuli_kind: str
    stimuli: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    config: dict
    source: dict
    versions: dict
    v_threshold: float = 1.0
    responses: str = "spikes"

    @property
    def count_dtype(self) -> type:
        """dtype of the per-trial responses: float32 rates, or spike counts (uint8, uint16
        when T > 255)."""
        if self.responses == "rates":
            return np.float32
        return np.uint8 if self.timesteps <= 255 else np.uint16

    def area(self, name: str) -> AreaNodes:
        for area in self.areas:
            if area.name == name:
                return area
        raise KeyError(name)

    @property
    def num_stimuli(self) -> int:
        return len(self.stimuli["label"])


@dataclass(frozen=True)
class AreaBatch:
    """One area's activity over a batch of ``B`` consecutive trials.

    Attributes:
        timestamps_ms: ``float64 [n]`` spike times (absolute, see the module docstring),
            ascending; ties in any order.
        node_ids: ``uint64 [n]`` the unit of each spike.
        counts: ``[B, N]`` spikes per unit per trial, unsigned integers (``counts[b].sum()``
            events of trial b); for a ``rates`` recording the float32 activations, with no
            events.
        membrane: ``float32 [B·T, n_rec]`` potentials of ``AreaNodes.membrane_units`` at every
            step, trial-major; ``None`` when no membrane is recorded.
    """

    timestamps_ms: np.ndarray
    node_ids: np.ndarray
    counts: np.ndarray
    membrane: np.ndarray | None = None


@dataclass(frozen=True)
class TrialBatch:
    """``B`` consecutive trials: which stimulus each showed, and every area's activity.

    ``first_trial`` is the index of the first of them; ``stimulus_index`` ``int64 [B]`` rows of
    :attr:`RecordingMeta.stimuli`.
    """

    first_trial: int
    stimulus_index: np.ndarray
    areas: dict[str, AreaBatch]

    def __len__(self) -> int:
        return len(self.stimulus_index)

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays, uncompressed (at most what writing it adds to a file)."""
        arrays = [self.stimulus_index]
        for a in self.areas.values():
            arrays += [a.timestamps_ms, a.node_ids, a.counts, a.membrane]
        return sum(x.nbytes for x in arrays if x is not None)
