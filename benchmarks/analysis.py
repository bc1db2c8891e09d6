"""Time ``tdsnn analyze`` on a large recording (a synthetic V1 of 100 000 units).

    python benchmarks/analysis.py [--units 100000] [--out DIR]

Writes a recording of ``--units`` units on a 36.75 mm sheet whose orientation preferences
follow a map made of plane waves (column spacing 3 mm), shown the 256 standard gratings for
T = 4 steps (Bernoulli spikes, rate 0.2·(1 + cos 2(θ − θ_pref))), then times the whole
``analyze_files`` (every metric, figure and the report) and prints the headline metrics.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tdsnn.analysis.report import analyze_files
from tdsnn.data.probes import grating_probes
from tdsnn.record import AreaNodes, RecordingMeta, RecordingWriter, TrialBatch, area_batch

SIDE_MM, SPACING_MM, T = 36.75, 3.0, 4


def synthetic_recording(path: Path, units: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, SIDE_MM, size=(units, 2))
    angles = rng.uniform(0, 2 * np.pi, 24)  # all directions: power on the whole spectral ring
    k = 2 * np.pi / SPACING_MM * np.stack([np.cos(angles), np.sin(angles)], 1)
    z = np.exp(1j * (positions @ k.T + rng.uniform(0, 2 * np.pi, 24))).sum(1)
    preferred = np.angle(z) / 2  # radians, period pi
    probes = grating_probes(24)
    theta = np.deg2rad(probes.params["orientation_deg"])
    area = AreaNodes("V1", (units, 1, 1), positions.astype(np.float32), SIDE_MM, 1.626, "grid")
    meta = RecordingMeta((area,), T, 1.0, "gratings", probes.params, (), {}, {}, {})
    with RecordingWriter(path, meta, len(probes), 32) as writer:
        for lo in range(0, len(probes), 32):
            rate = 0.2 * (1 + np.cos(2 * (theta[lo : lo + 32, None] - preferred[None])))
            spikes = rng.random((T, *rate.shape)) < rate[None]
            batch = area_batch(torch.from_numpy(spikes).reshape(T, len(rate), units, 1, 1), lo, 1.0)
            writer.append(TrialBatch(lo, np.arange(lo, lo + len(rate)), {"V1": batch}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100_000)
    parser.add_argument("--out", type=Path, help="keep the report here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.h5"
        start = time.perf_counter()
        synthetic_recording(path, args.units)
        print(f"wrote {args.units} units x 256 trials in {time.perf_counter() - start:.1f} s")
        out = args.out or Path(tmp) / "analysis"
        start = time.perf_counter()
        metrics = analyze_files([path], out)
        seconds = time.perf_counter() - start
    v1 = metrics["recordings"][0]["areas"]["V1"]
    print(f"analyze: {seconds:.1f} s for {args.units} units")
    for key in ("orientation_smoothness", "correlation_decay", "morans_i_response"):
        print(f"  {key} = {v1[key]:.3f}")
    print(f"  pinwheels = {v1['pinwheels']}")


if __name__ == "__main__":
    main()
