"""Recordings: probe stimuli, the HDF5 writer and reader, ``tdsnn record`` and its guarantees
(interruption, bounded memory, rejected inputs), and the file read by libsonata."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import default_signals

import tdsnn.record
from tdsnn.cli import main
from tdsnn.data import ShapesDataset
from tdsnn.data.probes import (
    category_probes,
    dataset_probes,
    default_frequencies,
    grating_probes,
    natural_probes,
)
from tdsnn.errors import ConfigError, RecordingError
from tdsnn.record import IncompleteRecordingWarning, record_run
from tdsnn.record.recorder import build_probes
from tdsnn.rundir import load_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(spiking_run):
    return spiking_run


def _default_gratings(run_dir):
    """The grating probes ``tdsnn record`` shows ``run_dir`` by default (its frequencies
    follow the run's receptive fields)."""
    return build_probes("gratings", load_run(run_dir))


@pytest.fixture(scope="module")
def gratings_h5(run_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("rec") / "gratings.h5"
    argv = ["record", str(run_dir), "--membrane", "--membrane-units", "12", "--batch-size",
            "48", "--out", str(path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    return path


# --------------------------------------------------------------------------- probes


def test_grating_probes_cover_orientation_frequency_phase():
    probes = grating_probes(24)
    assert len(probes) == 8 * 8 * 4
    p = probes.params
    assert sorted(set(p["orientation_deg"])) == [22.5 * k for k in range(8)]
    freqs = sorted(set(p["cycles_per_image"]))
    np.testing.assert_allclose(freqs, default_frequencies(24))
    assert freqs[0] == 1.0 and freqs[-1] == pytest.approx(6.0)
    np.testing.assert_allclose(np.diff(np.log(freqs)), np.log(6.0) / 7)  # log-spaced
    assert sorted(set(p["phase_deg"])) == [0.0, 90.0, 180.0, 270.0]
    assert (p["label"] == -1).all()
    images = probes.render(np.array([0, 37, 255]))
    assert images.shape == (3, 3, 24, 24) and images.min() >= 0 and images.max() <= 1
    again = grating_probes(24).render(np.array([37]))
    assert torch.equal(images[1:2], again)  # deterministic, any subset


def test_grating_probe_images_follow_their_parameters():
    probes = grating_probes(16, channels=1)
    row = int(
        np.flatnonzero(
            (probes.params["orientation_deg"] == 90) & (probes.params["phase_deg"] == 0)
        )[0]
    )
    image = probes.render(np.array([row]))[0, 0]
    assert image.shape == (16, 16)
    torch.testing.assert_close(image, image[:, :1].expand(-1, 16))  # 90 deg: varies along y only
    f = probes.params["cycles_per_image"][row]
    y = (torch.arange(16) + 0.5) / 16
    torch.testing.assert_close(image[:, 0], 0.5 + 0.5 * torch.sin(2 * torch.pi * f * y))


def test_category_and_dataset_probes_come_from_the_test_split():
    test = ShapesDataset("test", n=48, image_size=16)
    probes = category_probes(test, test.classes, per_class=3)
    assert len(probes) == 3 * len(test.classes)
    assert (np.bincount(probes.params["label"]) == 3).all()
    first = int(np.flatnonzero(test.labels.numpy() == 1)[2])  # row 5: third image of class 1
    torch.testing.assert_close(probes.render(np.array([5]))[0], test[first][0])
    everything = dataset_probes(test, test.classes, limit=10)
    assert len(everything) == 10
    torch.testing.assert_close(everything.render(np.arange(10)), test[list(range(10))][0])
    assert np.isnan(everything.params["orientation_deg"]).all()


def test_natural_probes_are_faces_and_non_faces():
    probes = natural_probes(16)
    assert len(probes) == 200 and probes.class_names == ("face", "non-face")
    assert (np.bincount(probes.params["label"]) == 100).all()
    images = probes.render(np.array([0, 199]))
    assert images.shape == (2, 3, 16, 16) and 0 <= images.min() and images.max() <= 1


# --------------------------------------------------------------------------- recording


def _model_events(run_dir, probes, areas, batch_size, device="cpu"):
    """What the model emits to ``probes``: per area, (steps, node ids) in time order."""
    trained = load_run(run_dir, device=device)
    out = {a: ([], []) for a in areas}
    with torch.no_grad():
        for indices, images in probes.batches(batch_size):
            spikes = trained.model(images.to(device), record=True).spikes
            for a in areas:
                s = spikes[a]
                t, b = s.shape[:2]
                trial, step, node = torch.nonzero(
                    s.reshape(t, b, -1).transpose(0, 1), as_tuple=True
                )
                out[a][0].append(((trial + int(indices[0])) * t + step).cpu().numpy())
                out[a][1].append(node.cpu().numpy())
    return {a: (np.concatenate(s), np.concatenate(n)) for a, (s, n) in out.items()}


def test_recorded_spikes_equal_the_spikes_the_model_emitted(run_dir, gratings_h5):
    probes = _default_gratings(run_dir)
    trials = len(probes)
    with tdsnn.record.open(gratings_h5) as rec:
        assert rec.complete and rec.num_trials == trials
        assert rec.areas == ("V1", "V4", "IT")
        expected = _model_events(run_dir, probes, rec.areas, 48)
        sheets = load_run(run_dir).sheets
        for area in rec.areas:
            steps, nodes = expected[area]
            assert len(nodes) > 100, f"{area} barely spikes; the test would prove little"
            timestamps, node_ids = rec.spikes(area)
            np.testing.assert_array_equal(timestamps, steps * 1.0)
            np.testing.assert_array_equal(node_ids, nodes)
            counts = rec.counts(area)
            assert counts.shape == (trials, sheets[area].num_units)
            assert int(counts.sum()) == len(nodes)
            ts, ids = rec.spikes(area, 7)  # one trial
            assert ((ts >= 7 * 4) & (ts < 8 * 4)).all()
            np.testing.assert_array_equal(
                np.bincount(ids.astype(int), minlength=counts.shape[1]), counts[7]
            )
            unit = int(np.argmax(counts.sum(0)))
            np.testing.assert_array_equal(rec.unit_spikes(area, unit), timestamps[node_ids == unit])
            np.testing.assert_allclose(
                rec.positions(area), sheets[area].positions.numpy(), rtol=1e-6
            )
        table = rec.trials
        np.testing.assert_array_equal(table["stimulus_index"], np.arange(trials))
        np.testing.assert_array_equal(table["orientation_deg"], probes.params["orientation_deg"])
        np.testing.assert_array_equal(table["start_ms"], np.arange(trials) * 4.0)
        assert rec.meta.config["model"]["v_threshold"] == 0.3
        assert rec.meta.versions["tdsnn"] == tdsnn.__version__


@pytest.mark.gpu
def test_recording_on_cuda_holds_the_spikes_the_model_emitted_there(run_dir, tmp_path):
    path = tmp_path / "cuda.h5"
    argv = ["record", str(run_dir), "--device", "cuda", "--batch-size", "48", "--out", str(path),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with tdsnn.record.open(path) as rec:
        probes = _default_gratings(run_dir)
        assert rec.complete and rec.num_trials == len(probes)
        expected = _model_events(run_dir, probes, rec.areas, 48, device="cuda")
        for area in rec.areas:
            steps, nodes = expected[area]
            assert len(nodes) > 100
            timestamps, node_ids = rec.spikes(area)
            np.testing.assert_array_equal(timestamps, steps * 1.0)
            np.testing.assert_array_equal(node_ids, nodes)
            assert int(rec.counts(area).sum()) == len(nodes)


def test_membrane_traces_equal_the_model_potential(run_dir, gratings_h5):
    trained = load_run(run_dir)
    images = _default_gratings(run_dir).render(np.arange(5, 8))
    with torch.no_grad():
        membrane = trained.model(images, record_membrane=True).membrane
    with tdsnn.record.open(gratings_h5) as rec:
        for area in rec.areas:
            units = rec.area(area).membrane_units
            assert len(units) == 12 and (np.diff(units) > 0).all()
            got = rec.membrane(area, slice(5, 8))  # [3 trials * T, 12]
            v = membrane[area].reshape(4, 3, -1)[:, :, units].transpose(0, 1).reshape(12, 12)
            np.testing.assert_allclose(got, v.numpy(), rtol=1e-6, atol=1e-6)


def test_libsonata_reads_every_spike_position_and_trace(gratings_h5):
    libsonata = pytest.importorskip("libsonata")
    with tdsnn.record.open(gratings_h5) as rec:
        spikes = libsonata.SpikeReader(str(gratings_h5))
        nodes = libsonata.NodeStorage(str(gratings_h5))
        reports = libsonata.SomaReportReader(str(gratings_h5))
        assert sorted(spikes.get_population_names()) == sorted(rec.areas)
        for area in rec.areas:
            pop = spikes[area]
            assert pop.sorting == "by_time" and pop.time_units == "ms"
            got = pop.get_dict()
            timestamps, node_ids = rec.spikes(area)
            np.testing.assert_array_equal(got["timestamps"], timestamps)
            np.testing.assert_array_equal(got["node_ids"], node_ids)
            population = nodes.open_population(area)
            everyone = libsonata.Selection([(0, population.size)])
            assert population.size == rec.area(area).num_units
            xy = np.stack([population.get_attribute(k, everyone) for k in ("x", "y")], axis=1)
            np.testing.assert_array_equal(xy.astype(np.float64) / 1000.0, rec.positions(area))
            assert set(population.get_attribute("area", everyone)) == {area}
            _, h, w = rec.area(area).shape
            np.testing.assert_array_equal(
                population.get_attribute("channel", everyone), np.arange(population.size) // (h * w)
            )
            frame = reports[area].get()
            units = rec.area(area).membrane_units
            np.testing.assert_array_equal(np.asarray(frame.ids), units)
            np.testing.assert_array_equal(np.asarray(frame.data), rec.membrane(area))
            assert reports[area].times == (0.0, rec.num_trials * 4.0, 1.0)


def test_area_subset_and_category_stimuli(run_dir, tmp_path):
    path = tmp_path / "cats.h5"
    argv = ["record", str(run_dir), "--stimuli", "categories", "--per-class", "2",
            "--areas", "it,v1", "--out", str(path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with tdsnn.record.open(path) as rec:
        assert rec.areas == ("V1", "IT")  # stack order
        assert rec.num_trials == 2 * len(ShapesDataset.classes)
        assert rec.meta.stimuli_kind == "categories"
        assert rec.meta.class_names == ShapesDataset.classes
        assert (np.bincount(rec.trials["label"]) == 2).all()
        assert not len(rec.area("v1").membrane_units)
        with pytest.raises(ConfigError, match="--membrane"):
            rec.membrane("V1")
        with pytest.raises(ConfigError, match="not in recording"):
            rec.area("V4")


# --------------------------------------------------------------------------- guarantees

_SLOW_RECORD = textwrap.dedent(
    """
    import sys, time
    import tdsnn.record.recorder as recorder
    from tdsnn.cli import main

    real = recorder.build_probes

    def slow(*args, **kwargs):
        probes = real(*args, **kwargs)
        render = probes.render

        def slow_render(indices):
            time.sleep(0.05)
            return render(indices)

        return type(probes)(probes.kind, probes.params, probes.class_names, slow_render)

    recorder.build_probes = slow
    sys.exit(main(sys.argv[1:]))
    """
)


def _start_slow_record(run_dir, out, *extra, preexec_fn=default_signals):
    """``tdsnn record`` of 0.05 s per trial, its SIGINT and SIGTERM set by ``preexec_fn``."""
    argv = ["record", str(run_dir), "--batch-size", "4", "--membrane", "--membrane-units", "5",
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": REPO}
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_RECORD, *argv], env=env, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn,
    )  # fmt: skip


def _wait_for_trials(path, at_least, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if path.exists():
            try:
                with warnings.catch_warnings(), h5py.File(path, "r", swmr=True) as f:
                    warnings.simplefilter("ignore")
                    if f["tdsnn/status"][0] >= at_least:
                        return
            except (OSError, KeyError):
                pass
        time.sleep(0.02)
    raise AssertionError("the recording never got going")


def _check_prefix_of_full_recording(partial, full):
    """Every completed trial of ``partial`` equals the same trial of the complete ``full``."""
    n = partial.num_trials
    for area in partial.areas:
        np.testing.assert_array_equal(partial.counts(area), full.counts(area, slice(0, n)))
        for got, want in zip(partial.spikes(area), full.spikes(area, slice(0, n)), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(partial.membrane(area), full.membrane(area, slice(0, n)))


@pytest.mark.slow
def test_killed_recording_leaves_a_readable_file_with_the_completed_trials(run_dir, tmp_path):
    out = tmp_path / "killed.h5"
    proc = _start_slow_record(run_dir, out)
    _wait_for_trials(out, 12, proc)
    proc.kill()
    proc.wait()
    full = tmp_path / "full.h5"
    assert (
        main(
            [
                "record",
                str(run_dir),
                "--membrane",
                "--membrane-units",
                "5",
                "--out",
                str(full),
                "--quiet",
            ]
        )
        == 0
    )
    with pytest.warns(IncompleteRecordingWarning, match="killed after"):
        partial = tdsnn.record.open(out)
    with partial, tdsnn.record.open(full) as complete:
        assert partial.state == "killed" and not partial.complete
        assert 12 <= partial.num_trials < len(_default_gratings(run_dir))
        assert partial.num_trials % 4 == 0
        assert len(partial.trials["start_ms"]) == partial.num_trials
        _check_prefix_of_full_recording(partial, complete)
    _check_resume(run_dir, out, full, killed_trials=partial.num_trials)


def _check_resume(run_dir, out, full, killed_trials):
    """``--resume`` of the killed ``out``: refused with other options, interrupted again
    (keeping the longer file), then finished into a file equal to the uninterrupted ``full``."""
    before = out.read_bytes()
    for options, message in (
        ({"areas": "it"}, "another areas (V1,V4,IT recorded, IT asked for)"),
        ({"membrane_units": 6}, "another V1 membrane units"),
        ({"stimuli": "categories"}, "another stimuli (gratings recorded, categories"),
    ):
        options = {"membrane_units": 5, "quiet": True, **options}
        with pytest.raises(ConfigError, match=re.escape(message)):
            record_run(run_dir, out, resume=True, **options)
    assert out.read_bytes() == before
    proc = _start_slow_record(run_dir, out, "--resume")
    _wait_for_trials(out.with_name(out.name + ".resuming"), killed_trials + 8, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "continue with --resume" in err, err
    with pytest.warns(IncompleteRecordingWarning, match="interrupted after"):
        again = tdsnn.record.open(out)
    with again:
        assert again.state == "interrupted" and again.num_trials >= killed_trials + 8
    assert not out.with_name(out.name + ".resuming").exists()
    argv = ["record", str(run_dir), "--membrane", "--membrane-units", "5", "--batch-size", "4",
            "--out", str(out), "--resume", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    with tdsnn.record.open(out) as resumed, tdsnn.record.open(full) as complete:
        assert resumed.complete and resumed.num_trials == len(_default_gratings(run_dir))
        _check_prefix_of_full_recording(resumed, complete)
        for key, column in complete.trials.items():
            np.testing.assert_array_equal(resumed.trials[key], column)
    with pytest.raises(ConfigError, match="is complete; there is nothing to resume"):
        record_run(run_dir, out, membrane_units=5, resume=True, quiet=True)


@pytest.mark.slow
def test_ctrl_c_closes_the_recording_cleanly_and_keeps_an_existing_file(run_dir, tmp_path):
    libsonata = pytest.importorskip("libsonata")
    out = tmp_path / "old.h5"
    out.write_bytes(b"previous recording")
    proc = _start_slow_record(run_dir, out, "--overwrite")
    partial_path = tmp_path / "old.h5.partial"
    _wait_for_trials(partial_path, 8, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted after" in err and "old.h5 is unchanged" in err
    assert out.read_bytes() == b"previous recording"
    with pytest.warns(IncompleteRecordingWarning, match="interrupted after"):
        rec = tdsnn.record.open(partial_path)
    with rec:
        assert rec.state == "interrupted" and rec.num_trials >= 8
        # closed cleanly: SONATA readers see exactly the completed trials
        spikes = libsonata.SpikeReader(str(partial_path))["V1"].get_dict()
        np.testing.assert_array_equal(spikes["node_ids"], rec.spikes("V1")[1])
        report = libsonata.SomaReportReader(str(partial_path))["V1"].get()
        assert np.asarray(report.data).shape == (rec.num_trials * 4, 5)
    argv = ["record", str(run_dir), "--membrane", "--membrane-units", "5", "--out", str(out),
            "--resume", "--quiet"]  # fmt: skip
    assert main(argv) == 0  # continues the .partial file, which then replaces old.h5
    assert not partial_path.exists()
    with tdsnn.record.open(out) as resumed:
        assert resumed.complete and resumed.num_trials == len(_default_gratings(run_dir))


_PEAK_MEMORY = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    import tdsnn.record.recorder as recorder
    from tdsnn.data.probes import grating_probes

    phases = int(sys.argv[3])
    recorder.build_probes = lambda kind, trained, **kw: grating_probes(16, phases=phases)
    recorder.record_run(sys.argv[1], sys.argv[2], batch_size=32, membrane_units=64, quiet=True)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


@pytest.mark.slow
def test_memory_stays_bounded_by_one_batch(run_dir, tmp_path):
    def peak_kib(phases):
        out = tmp_path / f"mem{phases}.h5"
        env = {**os.environ, "PYTHONPATH": REPO}
        result = subprocess.run(
            [sys.executable, "-c", _PEAK_MEMORY, str(run_dir), str(out), str(phases)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        with tdsnn.record.open(out) as rec:
            assert rec.num_trials == 64 * phases
        return int(result.stdout.split()[-1])

    small, large = peak_kib(2), peak_kib(20)  # 128 and 1280 trials
    assert large - small < 16 * 1024, (small, large)  # < 16 MiB more for 10x the trials


# --------------------------------------------------------------------------- rejected input


def test_bad_record_arguments_are_one_line_errors(run_dir, tmp_path, capsys):
    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    out = str(tmp_path / "x.h5")
    fails(["record", str(tmp_path / "missing"), "--out", out], "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["record", str(empty), "--out", out], "has no checkpoint best.pt")
    fails(["record", str(run_dir), "--areas", "v2", "--out", out], "v2 not in this run's stack")
    fails(["record", str(run_dir), "--out", str(tmp_path)], "is a folder")
    fails(["record", str(run_dir), "--out", str(tmp_path / "no" / "x.h5")], "does not exist")
    fails(["record", str(run_dir), "--batch-size", "0", "--out", out], "--batch-size")
    existing = tmp_path / "kept.h5"
    existing.write_bytes(b"keep me")
    fails(["record", str(run_dir), "--out", str(existing)], "pass --overwrite")
    fails(["record", str(run_dir), "--areas", "it,zz", "--overwrite", "--out", str(existing)], "zz")
    fails(["record", str(run_dir), "--resume", "--out", out], "no interrupted recording")
    assert existing.read_bytes() == b"keep me"
    assert not (tmp_path / "kept.h5.partial").exists()


def test_overwrite_replaces_the_file_once_complete(run_dir, tmp_path):
    out = tmp_path / "r.h5"
    out.write_bytes(b"old")
    assert (
        main(["record", str(run_dir), "--areas", "it", "--overwrite", "--out", str(out), "--quiet"])
        == 0
    )
    with tdsnn.record.open(out) as rec:
        assert rec.complete and rec.areas == ("IT",)
    assert not (tmp_path / "r.h5.partial").exists()


def test_reader_rejects_files_that_are_not_complete_recordings(gratings_h5, tmp_path):
    def rejected(path, message):
        with pytest.raises(RecordingError, match=message) as info:
            tdsnn.record.open(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)

    rejected(tmp_path / "nothing.h5", "does not exist")
    rejected(tmp_path, "is a folder")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    rejected(text, "not an HDF5 file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    rejected(other, "not a tdsnn recording")
    data = gratings_h5.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    rejected(truncated, "truncated or corrupt")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(data)
    with h5py.File(broken, "a") as f:
        del f["tdsnn/areas/V4/spike_index"]
    rejected(broken, "corrupt tdsnn recording")
    short = tmp_path / "short.h5"
    short.write_bytes(data)
    with h5py.File(short, "a") as f:
        f["spikes/IT/node_ids"].resize((3,))
    rejected(short, "truncated: spikes/IT")


# --------------------------------------------------------------------------- export


@pytest.mark.slow
def test_nwb_export_reads_back_with_pynwb(gratings_h5, tmp_path):
    from pynwb import NWBHDF5IO

    out = tmp_path / "rec.nwb"
    assert main(["export", str(gratings_h5), "--format", "nwb", "--out", str(out)]) == 0
    with tdsnn.record.open(gratings_h5) as rec, NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        units = nwb.units
        sizes = [rec.area(a).num_units for a in rec.areas]
        assert len(units) == sum(sizes)
        area_column = np.asarray(units["area"][:])
        node_column = np.asarray(units["node_id"][:])
        row = 0
        for area, n in zip(rec.areas, sizes, strict=True):
            assert (area_column[row : row + n] == area).all()
            np.testing.assert_array_equal(node_column[row : row + n], np.arange(n))
            np.testing.assert_allclose(
                np.stack(
                    [units["sheet_x_um"][row : row + n], units["sheet_y_um"][row : row + n]], 1
                ),
                rec.positions(area) * 1000.0,
            )
            busiest = np.argsort(rec.counts(area).sum(0))[-3:]
            for unit in [0, *busiest.tolist()]:
                want = rec.unit_spikes(area, unit) / 1000.0
                np.testing.assert_array_equal(units.get_unit_spike_times(row + unit), want)
            total = sum(len(units.get_unit_spike_times(row + u)) for u in range(n))
            assert total == len(rec.spikes(area)[0])  # every spike
            row += n
        trials = nwb.trials.to_dataframe()
        assert len(trials) == rec.num_trials
        np.testing.assert_allclose(trials["start_time"], rec.trials["start_ms"] / 1000.0)
        np.testing.assert_array_equal(trials["orientation_deg"], rec.trials["orientation_deg"])
        series = nwb.acquisition["membrane_V1"]
        np.testing.assert_array_equal(series.data[:], rec.membrane("V1"))
        assert series.rate == 1000.0


@pytest.mark.slow
def test_nwb_export_passes_nwbinspector(gratings_h5, run_dir, tmp_path):
    """No finding of nwbinspector (the validator DANDI runs) at CRITICAL or
    BEST_PRACTICE_VIOLATION level or above; the model is the NWB Subject."""
    pytest.importorskip("nwbinspector")
    from nwbinspector import Importance, inspect_nwbfile
    from pynwb import NWBHDF5IO

    from tdsnn.record.nwb_neo import IN_SILICO_SPECIES

    out = tmp_path / "rec.nwb"
    assert main(["export", str(gratings_h5), "--format", "nwb", "--out", str(out)]) == 0
    findings = list(inspect_nwbfile(nwbfile_path=str(out)))
    serious = [
        m for m in findings if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value
    ]
    assert not serious, [
        f"{m.importance.name}: {m.check_function_name}: {m.message}" for m in serious
    ]
    with NWBHDF5IO(str(out), "r") as io:
        nwb = io.read()
        subject = nwb.subject
        assert subject.subject_id == run_dir.name
        assert subject.species == IN_SILICO_SPECIES and subject.sex == "O"
        assert "simulated" in subject.description and "V1-V4-IT" in subject.description.upper()
        assert "simulated" in nwb.experiment_description
        keywords = list(nwb.keywords[:])
        assert "in silico" in keywords and "gratings" in keywords and "V1" in keywords


@pytest.mark.slow
def test_neo_export_has_one_spike_train_per_unit(gratings_h5, tmp_path):
    import neo

    out = tmp_path / "rec.pkl"
    assert main(["export", str(gratings_h5), "--format", "neo", "--out", str(out)]) == 0
    block = neo.io.PickleIO(str(out)).read_block()
    (segment,) = block.segments
    with tdsnn.record.open(gratings_h5) as rec:
        trains = segment.spiketrains
        assert len(trains) == sum(rec.area(a).num_units for a in rec.areas)
        by_name = {train.name: train for train in trains}
        for area in rec.areas:
            counts = rec.counts(area).sum(0)
            for unit in (0, int(np.argmax(counts))):
                train = by_name[f"{area}:{unit}"]
                assert train.annotations["area"] == area and train.annotations["node_id"] == unit
                np.testing.assert_array_equal(
                    train.rescale("ms").magnitude, rec.unit_spikes(area, unit)
                )
                assert float(train.t_stop.rescale("ms")) == rec.num_trials * 4.0
        assert sum(len(t) for t in trains) == sum(len(rec.spikes(a)[0]) for a in rec.areas)
        (epoch,) = segment.epochs
        assert len(epoch) == rec.num_trials
        np.testing.assert_array_equal(epoch.array_annotations["phase_deg"], rec.trials["phase_deg"])


def test_bad_export_arguments_are_one_line_errors(gratings_h5, tmp_path, capsys, monkeypatch):
    def fails(argv, message):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err

    missing = str(tmp_path / "none.h5")
    fails(
        ["export", missing, "--format", "nwb", "--out", str(tmp_path / "a.nwb")], "does not exist"
    )
    fails(["export", str(gratings_h5), "--format", "neo", "--out", str(tmp_path / "a.nix")], ".pkl")
    existing = tmp_path / "old.nwb"
    existing.write_bytes(b"old")
    fails(["export", str(gratings_h5), "--format", "nwb", "--out", str(existing)], "--overwrite")
    assert existing.read_bytes() == b"old"
    monkeypatch.setitem(sys.modules, "pynwb", None)
    fails(["export", str(gratings_h5), "--format", "nwb", "--out", str(tmp_path / "b.nwb")],
          "pip install 'tdsnn[export]'")  # fmt: skip
    assert not list(tmp_path.glob("*partial*"))


@pytest.mark.parametrize("timesteps", [4, 300])  # uint8 counts; uint16 with byte shuffle
def test_writer_round_trips_batches_of_any_size(tmp_path, timesteps):
    from tdsnn.record import AreaNodes, RecordingMeta, RecordingWriter, TrialBatch, area_batch

    shape = (3, 2, 5)
    area = AreaNodes("V1", shape, np.random.rand(30, 2).astype(np.float32), 5.0, 1.0, "tiled")
    params = grating_probes(8, orientations=2, cycles_per_image=(1.0,), phases=1).params
    meta = RecordingMeta((area,), timesteps, 0.5, "gratings", params, (), {}, {}, {})
    g = torch.Generator().manual_seed(0)
    written = []
    with RecordingWriter(tmp_path / "w.h5", meta, 15, trials_per_chunk=4) as writer:
        first = 0
        for size in (4, 3, 5, 3):  # aligned, aligned-short, unaligned, unaligned
            rate = 0.9 if timesteps > 255 else 0.3  # counts above 255 need uint16
            spikes = (torch.rand(timesteps, size, *shape, generator=g) < rate).float()
            batch = area_batch(spikes, first, 0.5)
            writer.append(TrialBatch(first, np.zeros(size, np.int64), {"V1": batch}))
            written.append(batch)
            first += size
    with tdsnn.record.open(tmp_path / "w.h5") as rec:
        assert rec.complete and rec.num_trials == 15
        counts = np.concatenate([b.counts for b in written])
        assert counts.max() > (255 if timesteps > 255 else 1)
        np.testing.assert_array_equal(rec.counts("V1"), counts)
        np.testing.assert_array_equal(
            rec.spikes("V1")[0], np.concatenate([b.timestamps_ms for b in written])
        )
        np.testing.assert_array_equal(rec.trials["stop_ms"], (np.arange(15) + 1) * timesteps * 0.5)
