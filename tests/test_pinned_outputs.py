"""Pinned outputs: a small run's weights, metrics and optimiser state, a recording, an
analysis's ``metrics.json`` and a NIR export hash to the values pinned here.

A move or split of modules that changes behaviour changes a hash. The values are those of this
project's CI machine (torch 2.11.0 CPU, one thread); another CPU or torch build may sum in
another order: re-pin with ``python tests/test_pinned_outputs.py`` and say why in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

PINNED = {
    "weights": "c9a64e7a017f095f",
    "optimizer": "8bebac74346f631f",
    "metrics": "7c0072462e7f40d6",
    "recording": "012afb4ef3327702",
    "analysis": "2f0c56e62b1995fa",
    "export": "72b4c78507782fd3",
}


def _tensor_bytes(value) -> bytes:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().contiguous().numpy().tobytes() + str(value.dtype).encode()
    if isinstance(value, dict):
        return b"".join(
            str(k).encode() + _tensor_bytes(v) for k, v in sorted(value.items(), key=str)
        )
    if isinstance(value, (list, tuple)):
        return b"".join(_tensor_bytes(v) for v in value)
    return repr(value).encode()


def _h5_bytes(path: Path) -> bytes:
    """Every dataset's name, dtype and values, in name order (attributes and timestamps out)."""
    chunks = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            data = np.asarray(obj[()])
            values = repr(data.tolist()).encode() if data.dtype == object else data.tobytes()
            chunks.append(name.encode() + str(obj.dtype).encode() + values)

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return b"".join(sorted(chunks))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def digests(root: Path) -> dict[str, str]:
    """Train, record, analyse and export one small run under ``root``; the outputs' hashes."""
    from tdsnn.cli import main
    from tdsnn.config import RunConfig
    from tdsnn.train import train

    torch.set_num_threads(1)
    run = root / "run"
    config = RunConfig().with_overrides({
        "model.area_stack": "v1-v4-it", "model.width": 0.0625, "model.blocks": 1,
        "model.v_threshold": 0.3, "data.image_size": 16, "optim.epochs": 2,
        "optim.batch_size": 16, "data.train_size": 96, "data.test_size": 64,
        "run.out": str(run), "run.quiet": True, "run.seed": 3,
    })  # fmt: skip
    train(config)
    last = torch.load(run / "last.pt", weights_only=False, map_location="cpu")
    summary = json.loads((run / "summary.json").read_text())
    for key in ("run_dir", "images_per_s", "wall_seconds", "environment"):
        summary.pop(key)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in metrics:
        for key in [k for k in record if "second" in k or k.endswith("per_s") or k == "time"]:
            record.pop(key)
    h5 = root / "gratings.h5"
    argv = ["record", str(run), "--stimuli", "gratings", "--areas", "v1,it", "--quiet"]
    assert main([*argv, "--out", str(h5)]) == 0
    assert main(["analyze", str(h5), "--out", str(root / "analysis")]) == 0
    analysis = json.loads((root / "analysis" / "metrics.json").read_text())
    analysis.pop("seconds")
    for recording in analysis["recordings"]:
        recording.pop("path"), recording["source"].pop("run_dir")
    nir = root / "net.nir"
    assert main(["export", str(run), "--format", "nir", "--out", str(nir)]) == 0
    return {
        "weights": _sha(_tensor_bytes(last["model"])),
        "optimizer": _sha(_tensor_bytes(last["optimizer"])),
        "metrics": _sha(json.dumps([summary, metrics], sort_keys=True).encode()),
        "recording": _sha(_h5_bytes(h5)),
        "analysis": _sha(json.dumps(analysis, sort_keys=True).encode()),
        "export": _sha(_h5_bytes(nir)),
    }


@pytest.mark.slow
def test_outputs_are_pinned(tmp_path, monkeypatch):
    pytest.importorskip("nir")
    monkeypatch.chdir(tmp_path)
    assert digests(tmp_path) == PINNED


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(digests(Path(folder)), indent=1))
        sys.exit(0)
