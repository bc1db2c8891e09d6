"""Recording costs: writer throughput, bytes per spike event on disk, and recording against
plain inference over the same stimuli.

    python benchmarks/record.py --run RUN_DIR [--repeats 5] [--device cpu] [--out results.json]

1. writer: :class:`tdsnn.record.RecordingWriter` appending prepared batches of V1-sized
   spike events (random 10 % rasters, 3 areas, 32 batches of 64 trials; file creation not
   timed), events per second of wall time; also the conversion from spike tensors
   (:func:`tdsnn.record.area_batch`) plus the write, file creation included (8 batches).
2. bytes per event: the slope of file size against spike events over two recordings of
   different length (the fixed overhead is the intercept).
3. recording vs inference: ``tdsnn record``'s loop (model + events + write, every area) against
   the same model forward over the same grating batches, same process, alternating, medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tdsnn.data.probes import grating_probes
from tdsnn.record import (
    AreaNodes,
    RecordingMeta,
    RecordingWriter,
    TrialBatch,
    area_batch,
    record_run,
)
from tdsnn.record import recorder as recorder_module
from tdsnn.rundir import load_run


def _meta(shape, areas=3, timesteps=4) -> RecordingMeta:
    n = shape[0] * shape[1] * shape[2]
    nodes = tuple(
        AreaNodes(f"A{i}", shape, np.random.rand(n, 2).astype(np.float32), 10.0, 1.0, "tiled")
        for i in range(areas)
    )
    stimuli = grating_probes(16, orientations=1, cycles_per_image=(1.0,), phases=1).params
    return RecordingMeta(nodes, timesteps, 1.0, "gratings", stimuli, (), {}, {}, {})


def _batches(meta, trials_per_batch, num_batches, rate=0.1, seed=0):
    """Prepared :class:`TrialBatch` objects (tensors to events done beforehand)."""
    g = torch.Generator().manual_seed(seed)
    t = meta.timesteps
    out = []
    for k in range(num_batches):
        first = k * trials_per_batch
        areas = {}
        for area in meta.areas:
            spikes = (torch.rand(t, trials_per_batch, *area.shape, generator=g) < rate).float()
            areas[area.name] = area_batch(spikes, first, meta.dt_ms)
        out.append(TrialBatch(first, np.zeros(trials_per_batch, np.int64), areas))
    return out


def _shifted(batch: TrialBatch, trials: int) -> TrialBatch:
    """``batch`` moved ``trials`` trials later (no copy of its events)."""
    return TrialBatch(batch.first_trial + trials, batch.stimulus_index, batch.areas)


def writer_throughput(path: Path, repeats: int) -> dict:
    meta = _meta((16, 24, 24))  # V1 of the default run: 9216 units
    batches = _batches(meta, 64, 8)
    events = 4 * sum(len(a.node_ids) for b in batches for a in b.areas.values())
    times = []
    for _ in range(repeats):  # sustained: 32 batches appended and closed, file creation apart
        with RecordingWriter(path, meta, 64 * 4 * len(batches)) as writer:
            start = time.perf_counter()
            for k in range(4):
                for batch in batches:
                    writer.append(_shifted(batch, 64 * len(batches) * k))
        times.append(time.perf_counter() - start)
    # the conversion from spike tensors as well
    g = torch.Generator().manual_seed(1)
    rasters = [
        (torch.rand(4, 64, 16, 24, 24, generator=g) < 0.1).float() for _ in range(len(batches))
    ]
    convert = []
    for _ in range(repeats):
        start = time.perf_counter()
        with RecordingWriter(path, meta, 64 * len(batches)) as writer:
            for k, spikes in enumerate(rasters):
                areas = {a.name: area_batch(spikes, 64 * k, 1.0) for a in meta.areas}
                writer.append(TrialBatch(64 * k, np.zeros(64, np.int64), areas))
        convert.append(time.perf_counter() - start)
    converted = sum(len(a.node_ids) for b in batches for a in b.areas.values())
    return {
        "events": events,
        "write_s": statistics.median(times),
        "events_per_s": events / statistics.median(times),
        "convert_and_write_events_per_s": converted / statistics.median(convert),
    }


def bytes_per_event(path: Path) -> dict:
    meta = _meta((16, 24, 24))
    sizes = []
    for num_batches in (2, 8):
        batches = _batches(meta, 64, num_batches, seed=num_batches)
        with RecordingWriter(path, meta, 64 * num_batches) as writer:
            for batch in batches:
                writer.append(batch)
        events = sum(len(a.node_ids) for b in batches for a in b.areas.values())
        sizes.append((events, path.stat().st_size))
    (e1, s1), (e2, s2) = sizes
    slope = (s2 - s1) / (e2 - e1)
    # what the per-trial counts add at 10 % firing (T = 4): 2 bytes per unit per trial
    return {"bytes_per_event": slope, "fixed_overhead_bytes": s1 - slope * e1, "points": sizes}


def record_vs_inference(
    run_dir: Path, path: Path, repeats: int, phases: int, device: str = "cpu"
) -> dict:
    """Both load the run and show it the same probes; the recording also writes every area.

    On CUDA the inference reads the logits back (what any use of them costs), so both end
    with the device idle."""
    size = load_run(run_dir).config.data.image_size
    probes = grating_probes(size, phases=phases)
    recorder_module.build_probes = lambda kind, trained, **kw: probes  # same stimuli

    def inference():
        trained = load_run(run_dir, device=device)
        with torch.no_grad():
            for _, images in probes.batches(64):
                trained.model(images.to(device)).logits.cpu()

    def recording():
        path.unlink(missing_ok=True)  # a new file each time (replacing one costs a delete)
        record_run(run_dir, path, batch_size=64, device=device, quiet=True)

    inference()  # warm-up
    plain, record = [], []
    for _ in range(repeats):
        for fn, out in ((inference, plain), (recording, record)):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        path.unlink()
    return {
        "trials": len(probes),
        "inference_s": statistics.median(plain),
        "record_s": statistics.median(record),
        "ratio": statistics.median(record) / statistics.median(plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--phases", type=int, default=8, help="grating phases (trials = 64x)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here too")
    parser.add_argument("--device", default="cpu", help="of the model in the third figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        results = {
            "torch_threads": torch.get_num_threads(),
            "writer": writer_throughput(path, args.repeats),
            "size": bytes_per_event(path),
            "record_vs_inference": record_vs_inference(
                args.run, path, args.repeats, args.phases, args.device
            ),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
