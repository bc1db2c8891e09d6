"""``tdsnn experiment``: spec checks, paired seeds, plateau training, resume after a kill."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tdsnn.area_sheets import sheet_layouts
from tdsnn.cli import main
from tdsnn.config import RunConfig
from tdsnn.errors import ConfigError
from tdsnn.experiment.runner import choose_epochs, continue_command
from tdsnn.experiment.spec import load_spec, parse_seeds
from tdsnn.experiment.stats import min_detectable_effect
from tdsnn.train import Trainer

BASE = {
    "area-stack": "v1-it",
    "width": 0.0625,
    "image-size": 16,
    "train-size": 96,
    "val-size": 32,
    "test-size": 32,
    "batch-size": 32,
    "epochs": 3,
    "until-plateau": 1,
}
SPEC = {
    "name": "tiny",
    "base": BASE,
    "arms": {"none": {"topo": "none"}, "relu-stc": {"neuron": "relu", "beta": 0}},
    "seeds": "0-1",
    "measures": {
        "summary": ["test_acc", "val_acc", "epoch"],
        "topography": ["V1"],
        "evaluate": {"tests": ["weight-noise"], "levels": [0, 0.2], "repeats": 1, "test_size": 32},
    },
    "equivalence": {"test_acc": 0.05, "weight-noise": 0.05},
}


DIRECTION = {"name": "acc", "claim": "c", "arms": ["none", "relu-stc"], "measure": "test_acc",
             "expect": "higher"}  # fmt: skip


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def assert_one_line_error(code: int, capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"colour": "blue"}, "unknown key(s) ['colour']"),
        ({"arms": {}}, "at least one arm"),
        ({"seeds": "5-2"}, "runs backwards"),
        ({"seeds": "0,0"}, "names a seed twice"),
        ({"measures": {"summary": ["accuracy"]}}, "unknown measure(s) ['accuracy']"),
        ({"measures": {"evaluate": {"tests": ["noise"]}}}, "unknown test(s) ['noise']"),
        ({"measures": {"plots": 1}}, "unknown key(s) ['plots']"),
        ({"arms": {"a": {"width": -1}}}, "arm 'a'"),
        ({"arms": {"a": {"colour": 1}}}, "unknown train option 'colour'"),
        ({"arms": {"a": {"neuron": "relu", "topo": "stc"}}}, "r_CCG synchrony"),
        ({"arms": {"a": {"neuron": "relu", "gamma": 1, "beta": 0}}}, "membrane term"),
        ({"comparisons": [["none", "other"]]}, "unknown arm(s) ['other']"),
        ({"measures": {"analyze": {"gratings": {"metrics": ["beauty"]}}}}, "['beauty']"),
        ({"measures": {"analyze": {"noise": {"metrics": ["mean_count"]}}}}, "stimuli 'noise'"),
        (
            {"measures": {"analyze": {"gratings": {"metrics": ["mean_count/null-z/sheet"]}}}},
            "mean_count has no null; null-z and percentile apply to",
        ),  # fmt: skip
        (
            {"measures": {"analyze": {"gratings": {"metrics": ["morans_i_response/z/field"]}}}},
            "the nulls of morans_i_response: ['within', 'sheet']",
        ),  # fmt: skip
        (
            {"measures": {"analyze": {"gratings": {"metrics": ["synchrony_decay"]}}}},
            "arm 'relu-stc' has --neuron relu",
        ),
        ({"match_accuracy": "yes"}, "match_accuracy must be true or false"),
        ({"equivalence": -1}, "equivalence must be"),
        ({"equivalence": {"test_acc": 0}}, "equivalence.test_acc must be"),
        (
            {"equivalence": 0.02},
            "equivalence: one margin (0.02) for measures in different units (test_acc, val_acc",
        ),  # fmt: skip
        ({"correction": "bonferroni"}, "correction must be one of ['holm', 'bh', 'none']"),
        ({"interval": "bootstrap"}, "interval must be one of ['t', 'bca']"),
        ({"interval": "bca"}, "interval: bca needs at least 10 seeds (the spec has 2)"),
        (
            {"directions": [DIRECTION], "primary": ["acc", "robust"]},
            "primary names direction(s) ['robust'] that do not exist; directions: ['acc']",
        ),  # fmt: skip
        (
            {"directions": [{k: v for k, v in DIRECTION.items() if k != "name"}]},
            "directions[0] has no 'name'",
        ),  # fmt: skip
        ({"directions": [DIRECTION, DIRECTION]}, "directions[1].name 'acc' names an earlier"),
        (
            {"measures": {"evaluate": {"tests": ["pruning-channels"], "levels": [0, 1]}}},
            "pruning-channels takes fractions in [0, 1)",
        ),  # fmt: skip
        (
            {"measures": {"evaluate": {"tests": ["weight-noise"], "levels": {"lesion": [0]}}}},
            "'lesion' is not one of the tests",
        ),  # fmt: skip
        (
            {"measures": {"evaluate": {"tests": ["weight-noise"], "layers": ["V9"]}}},
            "arm 'none' has no layer(s) ['V9']",
        ),  # fmt: skip
        (
            {
                "directions": [
                    {
                        "name": "c",
                        "claim": "c",
                        "arms": ["none", "x"],
                        "measure": "m",
                        "expect": "higher",
                    }
                ]
            },
            "directions[0].arms",
        ),  # fmt: skip
        (
            {
                "directions": [
                    {
                        "name": "c",
                        "claim": "c",
                        "arms": ["none", "relu-stc"],
                        "measure": "m",
                        "expect": "up",
                    }
                ]
            },
            "directions[0].expect",
        ),  # fmt: skip
        (
            {"directions": [{"name": "c", "claim": "c", "arms": ["none", "relu-stc"]}]},
            "has no 'measure'",
        ),  # fmt: skip
        ({"arms": {"a": {"sheets-from": "b"}}}, "arm 'a': sheets-from must name another arm"),
        ({"arms": {"a": {"sheets-from": "a"}, "b": {}}}, "sheets-from must name another arm (b)"),
        (
            {"arms": {"a": {}, "b": {"sheets-from": "a"}, "c": {"sheets-from": "b"}}},
            "arm 'c': sheets-from 'b': that arm takes its own sheets from an arm",
        ),  # fmt: skip
        (
            {"arms": {"a": {}, "b": {"sheets-from": "a", "layout": "swap"}}},
            "arm 'b': sheets-from gives the arm its sheets; drop layout",
        ),  # fmt: skip
    ],
)
def test_bad_spec_is_one_line_and_touches_nothing(tmp_path, capsys, change, fragment):
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, **change})
    out = tmp_path / "out"
    assert_one_line_error(main(["experiment", str(spec), "--out", str(out)]), capsys, fragment)
    assert not out.exists()


def test_missing_spec_and_bad_yaml(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["experiment", str(tmp_path / "none.yaml"), "--out", str(out)])
    assert_one_line_error(code, capsys, "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [unclosed")
    assert_one_line_error(main(["experiment", str(bad), "--out", str(out)]), capsys, "cannot be")
    assert not out.exists()


def test_seeds_forms():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("4,1") == (1, 4)
    assert parse_seeds(7) == (7,)
    assert parse_seeds([2, 0]) == (0, 2)
    for bad in ("5-2", "", "a", True, [1.5], -1):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_arms_share_base_and_checks_plateau_needs_validation(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", SPEC))
    plans = spec.plan()
    assert [p.name for p in plans] == ["none/seed-0", "none/seed-1", "relu-stc/seed-0",
                                       "relu-stc/seed-1"]  # fmt: skip
    relu = plans[2].config
    assert relu.model.neuron == "relu" and relu.model.timesteps == 1 and relu.topo.beta == 0
    assert relu.data.val_size == 32 and relu.optim.until_plateau == 1 and relu.run.seed == 0
    no_val = {**SPEC, "base": {k: v for k, v in BASE.items() if k != "val-size"}}
    with pytest.raises(ConfigError, match="--val-size"):
        load_spec(write_spec(tmp_path / "t.yaml", no_val))


FC = {**BASE, "readout": "fc", "topo.connectivity": 8}


def test_a_control_takes_the_sheets_and_layers_of_the_loss_it_is_compared_with(tmp_path):
    spec = {**SPEC, "base": FC, "measures": {"evaluate": {"tests": ["weight-noise"]}},
            "arms": {"none": {"neuron": "relu", "topo": "none"},
                     "ws": {"neuron": "relu", "topo": "ws"},
                     "as": {"neuron": "relu", "topo": "as"}},
            "comparisons": [["none", "ws"], ["none", "as"]]}  # fmt: skip
    plans = {p.arm: p for p in load_spec(write_spec(tmp_path / "s.yaml", spec)).plan()}
    control = plans["none"].config.topo
    assert control.name == "ws" and control.alpha == control.beta == control.gamma == 0
    assert not control.enabled and control.connectivity == 8
    layouts = {arm: sheet_layouts(plan.config) for arm, plan in plans.items()}
    assert layouts["none"] == layouts["ws"] == layouts["as"]
    assert layouts["none"] == {"V1": "retinotopic", "IT": "retinotopic", "readout": "grid"}
    assert {arm: plan.layers for arm, plan in plans.items()} == dict.fromkeys(plans, ("readout",))
    # a control compared with retinotopic losses keeps its config and takes their layers
    plans = {p.arm: p for p in load_spec(write_spec(tmp_path / "t.yaml", {
        **SPEC, "measures": {"evaluate": {"tests": ["weight-noise"]}}})).plan()}  # fmt: skip
    assert plans["none"].config.topo.name == "none" and plans["none"].layers == ("V1", "IT")
    # arms that cannot share sheets are refused
    tiled = {"neuron": "relu", "topo": "none", "layout": "tiled"}
    clash = {**spec, "arms": {"ws": {"neuron": "relu", "topo": "ws"}, "tiled": tiled},
             "comparisons": [["ws", "tiled"]]}  # fmt: skip
    with pytest.raises(ConfigError, match="different sheets"):
        load_spec(write_spec(tmp_path / "u.yaml", clash))
    # a control compared with no topographic arm has no topographic layer
    alone = {**SPEC, "arms": {"a": {"topo": "none"}, "b": {"topo": "none", "lr": 0.01}},
             "measures": {"evaluate": {"tests": ["weight-noise"]}}}  # fmt: skip
    with pytest.raises(ConfigError, match="name the layers"):
        load_spec(write_spec(tmp_path / "v.yaml", alone))


def _initial_state(config: RunConfig, out: Path) -> dict:
    trainer = Trainer(config.with_overrides({"run.out": str(out)}))
    trainer.setup()
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_paired_seeds_start_from_the_same_weights(tiny_config, tmp_path):
    """Seed k of arms that differ in loss, units or readout starts from the same weights."""
    none = _initial_state(tiny_config.with_overrides({"topo.name": "none"}), tmp_path / "a")
    stc = _initial_state(tiny_config, tmp_path / "b")
    relu = _initial_state(
        tiny_config.with_overrides({"model.neuron": "relu", "topo.beta": 0}), tmp_path / "c"
    )
    fc = _initial_state(tiny_config.with_overrides({"model.readout": "fc"}), tmp_path / "d")
    other = _initial_state(tiny_config.with_overrides({"run.seed": 1}), tmp_path / "e")
    for state in (stc, relu):
        assert state.keys() == none.keys()
        assert all(torch.equal(state[k], none[k]) for k in none)
    shared = [k for k in none if not k.startswith("readout.")]
    assert all(torch.equal(fc[k], none[k]) for k in shared)
    assert not torch.equal(other["stem.conv.weight"], none["stem.conv.weight"])


def test_until_plateau_keeps_epochs_and_picks_best_on_validation(tiny_config, tmp_path):
    from tdsnn.rundir import load_run
    from tdsnn.train import train

    config = tiny_config.with_overrides(
        {
            "optim.epochs": 6,
            "optim.until_plateau": 1,
            "data.val_size": 32,
            "run.keep_epochs": True,
            "run.out": str(tmp_path / "run"),
        }  # fmt: skip
    )
    summary = train(config)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    epochs = [r for r in records if "val_acc" in r]
    assert len(epochs) == summary["epochs"] and summary["selected_on"] == "validation"
    best = max(range(len(epochs)), key=lambda i: (epochs[i]["val_acc"], -i))
    assert summary["best_epoch"] == best + 1 and summary["best_val_acc"] == epochs[best]["val_acc"]
    if summary["plateau_reached"]:  # one epoch without a better validation accuracy
        assert summary["epochs"] == summary["best_epoch"] + 1
    else:
        assert summary["epochs"] == 6
    kept = sorted(p.name for p in (tmp_path / "run/epochs").iterdir())
    assert kept == [f"epoch-{e:03d}.pt" for e in range(1, summary["epochs"] + 1)]
    best_run = load_run(tmp_path / "run", "best")
    same = load_run(tmp_path / "run", summary["best_epoch"])
    for k, v in best_run.model.state_dict().items():
        assert torch.equal(v, same.model.state_dict()[k])


def test_matched_checkpoint_is_the_first_epoch_reaching_the_pairs_lowest_plateau(tmp_path):
    spec = load_spec(write_spec(tmp_path / "s.yaml", {**SPEC, "match_accuracy": True}))
    plans = spec.plan()
    curves = {"none/seed-0": [0.2, 0.5, 0.4], "relu-stc/seed-0": [0.3, 0.35, 0.45],
              "none/seed-1": [0.6, 0.7, 0.65], "relu-stc/seed-1": [0.1, 0.2, 0.3]}  # fmt: skip
    for plan in plans:
        run = tmp_path / plan.run_dir
        run.mkdir(parents=True)
        acc = curves[plan.name]
        best = max(range(3), key=lambda i: acc[i]) + 1
        (run / "summary.json").write_text(json.dumps({"best_epoch": best}))
        lines = [{"epoch": e + 1, "test_acc": a, "val_acc": a} for e, a in enumerate(acc)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    epochs = choose_epochs(spec, plans, tmp_path)
    # seed 0: plateaus 0.5 and 0.45 -> 0.45; seed 1: 0.7 and 0.3 -> 0.3
    assert epochs == {"none/seed-0": 2, "relu-stc/seed-0": 3, "none/seed-1": 1,
                      "relu-stc/seed-1": 3}  # fmt: skip
    best = choose_epochs(load_spec(write_spec(tmp_path / "b.yaml", SPEC)), plans, tmp_path)
    assert best == {"none/seed-0": 2, "relu-stc/seed-0": 3, "none/seed-1": 2,
                    "relu-stc/seed-1": 3}  # fmt: skip


def _experiment(spec: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "tdsnn", "experiment", str(spec), "--out", str(out),
               "--quiet", "--jobs", "2"]  # fmt: skip
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip


def _workers_of(out: Path) -> list[int]:
    """Process ids of live experiment workers writing into ``out``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ")[-1][0]
        except (OSError, IndexError):
            continue
        if b"tdsnn.experiment.worker" in command and str(out).encode() in command and state != "Z":
            found.append(int(proc.name))
    return found


def _results(out: Path) -> tuple[str, dict]:
    summary = json.loads((out / "summary.json").read_text())
    return (out / "results.csv").read_text(), summary["arms"]


@pytest.mark.slow
def test_killed_experiment_continues_to_the_uninterrupted_results(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    start = time.monotonic()
    reference = _experiment(spec, tmp_path / "reference")
    assert reference.wait(timeout=600) == 0, reference.stderr.read().decode()
    elapsed = time.monotonic() - start
    csv_text, arms = _results(tmp_path / "reference")
    rows = csv_text.strip().splitlines()
    assert rows[0] == "arm,seed,measure,level,value"
    # 2 arms x 2 seeds x (3 summary + 1 topography + 2 levels x (accuracy, drop) + auc +
    # mean_accuracy + the weight std of the 5 conv weights of V1 and IT that the noise acts on)
    assert len(rows) - 1 == 2 * 2 * (3 + 1 + 4 + 1 + 1 + 5)
    assert set(arms) == {"none", "relu-stc"} and arms["none"]["test_acc"]["n"] == 2
    assert (tmp_path / "reference/report.md").is_file()
    for run in ("none/seed-0", "relu-stc/seed-1"):  # ordinary run directories
        assert (tmp_path / "reference/runs" / run / "best.pt").is_file()

    out = tmp_path / "killed"
    kills = 0
    moments = sorted(random.Random().uniform(0.15, 0.85) * elapsed for _ in range(2))
    for i, moment in enumerate(moments):
        process = _experiment(spec, out)
        time.sleep(moment)
        if process.poll() is None:
            if i == 0:  # the experiment alone: its workers must die with it
                os.kill(process.pid, signal.SIGKILL)
            else:
                os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait(timeout=600)
        time.sleep(0.5)
        assert not _workers_of(out), "workers outlived the killed experiment"
    finish = _experiment(spec, out)
    assert finish.wait(timeout=600) == 0, finish.stderr.read().decode()
    assert kills >= 1
    assert _results(out) == (csv_text, arms)
    # a second invocation finds everything done and changes nothing
    again = _experiment(spec, out)
    assert again.wait(timeout=600) == 0 and _results(out) == (csv_text, arms)


def test_a_part_keeps_the_comparisons_and_directions_among_its_arms(tmp_path, capsys):
    arms = {
        **SPEC["arms"],
        "stc": {"topo": "stc"},
        "swapped": {"topo": "stc", "sheets-from": "none"},
    }
    other = {**DIRECTION, "name": "other", "arms": ["none", "stc"]}
    data = {**SPEC, "arms": arms, "comparisons": [["none", "relu-stc"], ["none", "stc"]],
            "directions": [DIRECTION, other],
            "contrasts": {"c": {"stc": 1, "relu-stc": -1}}}  # fmt: skip
    spec = load_spec(write_spec(tmp_path / "s.yaml", data))
    part = spec.part(["stc", "none"])
    assert list(part.arms) == ["none", "stc"] and part.comparisons == (("none", "stc"),)
    assert [d.name for d in part.directions] == ["other"] and part.contrasts == {}
    path = write_spec(tmp_path / "s.yaml", data)
    for arms, fragment in (("none,bogus", "no arm(s) ['bogus']"), ("swapped", "add that arm"),
                           (",", "--arms takes arm names"),
                           (" , ", "--arms takes arm names")):  # fmt: skip
        code = main(["experiment", str(path), "--out", str(tmp_path / "o"), "--arms", arms])
        assert_one_line_error(code, capsys, fragment)
    assert not (tmp_path / "o").exists()


def test_the_stop_message_continues_with_the_same_jobs_and_arms():
    base = "tdsnn experiment s.yaml --out o"
    assert continue_command("s.yaml", "o") == base
    assert continue_command("s.yaml", "o", 2, ["a", "b"]) == base + " --jobs 2 --arms a,b"


def test_a_changed_run_is_refused_and_an_unknown_folder_too(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    spec = write_spec(tmp_path / "spec.yaml", SPEC)
    plans = load_spec(spec).plan()
    other = plans[0].config.with_overrides({"optim.lr": 0.1}).to_dict()
    runs = {plans[0].name: {"arm": "none", "seed": 0, "run_dir": plans[0].run_dir,
                            "config": other}}  # fmt: skip
    (out / "experiment.json").write_text(json.dumps({"runs": runs}))
    code = main(["experiment", str(spec), "--out", str(out)])
    assert_one_line_error(code, capsys, "run none/seed-0 was trained with other options", "lr")
    (out / "stray").write_text("")
    (out / "experiment.json").unlink()
    code = main(["experiment", str(spec), "--out", str(out)])
    assert_one_line_error(code, capsys, "not empty")


@pytest.mark.slow
def test_more_seeds_train_only_the_new_runs_and_new_measures_measure_again(tmp_path):
    measures = {"summary": ["test_acc"]}
    one = write_spec(tmp_path / "one.yaml", {**SPEC, "seeds": "0", "measures": measures})
    out = tmp_path / "out"
    assert main(["experiment", str(one), "--out", str(out), "--quiet"]) == 0
    kept = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/seed-0/best.pt")}
    assert len(kept) == 2
    more = {**measures, "topography": ["V1"]}
    two = write_spec(tmp_path / "two.yaml", {**SPEC, "seeds": "0-1", "measures": more})
    # a part: one arm, trained, measured and reported alone
    assert main(["experiment", str(two), "--out", str(out), "--quiet", "--arms", "none"]) == 0
    assert not (out / "runs/relu-stc/seed-1").exists()
    rows = (out / "results.csv").read_text().strip().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {"none"} and len(rows) == 2 * 2
    assert main(["experiment", "report", str(out)]) == 0  # the part's arms, from experiment.json
    measured = (out / "measures/none/seed-1.json").stat().st_mtime_ns
    # every arm: only the other arm's new run trains, and only its runs are measured
    assert main(["experiment", str(two), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # seed 0 not trained again
    assert (out / "measures/none/seed-1.json").stat().st_mtime_ns == measured
    rows = (out / "results.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 2 * 2 * 2  # arms x seeds x (test_acc, topography_score/V1)
    assert sum("topography_score/V1" in r for r in rows) == 4  # seed 0 measured again


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec", sorted((Path(__file__).parents[1] / "configs/experiments").glob("*.yaml")), ids=str
)
def test_example_specs_load(spec):
    loaded = load_spec(spec)
    assert len(loaded.arms) >= 2 and len(loaded.seeds) >= 3 and loaded.comparisons
    for plan in loaded.plan():
        optim = plan.config.optim
        if optim.select == "final":  # a published recipe: a fixed budget, the final model
            assert optim.until_plateau is None and optim.epochs >= 10
        else:  # the best validation epoch: until it plateaus, or over a long fixed budget
            assert plan.config.data.val_size > 0
            assert optim.until_plateau or optim.epochs >= 100


@pytest.mark.slow
def test_torchrun_spreads_runs_over_ranks(tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", {**SPEC, "measures": {"summary": ["test_acc"]}})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "-m", "tdsnn", "experiment", str(spec), "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (out / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    logs = sorted((out / "logs").iterdir())
    assert len(logs) == 4 and all(log.name.endswith(".run.log") for log in logs)
    headers = [[x for x in log.read_text().splitlines() if x.startswith("# ")] for log in logs]
    assert all(len(h) == 1 for h in headers)  # every run ran once, on one rank
    assert {h[0].rsplit(" ", 1)[-1] for h in headers} == {"0", "1"}


def _direction(name, claim, measure, expect, **extra):
    return {"name": name, "claim": claim, "arms": ["none", "relu-stc"], "measure": measure,
            "expect": expect, "source": "paper", **extra}  # fmt: skip


def _direction_rows():
    rows = []
    values = {"none": ([0.80, 0.82, 0.85, 0.81], [0.1, 0.12, 0.11, 0.13]),
              "relu-stc": ([0.90, 0.93, 0.94, 0.92], [0.101, 0.119, 0.1105, 0.1302])}  # fmt: skip
    for arm, (accuracies, drops) in values.items():
        for seed, (acc, drop) in enumerate(zip(accuracies, drops, strict=True)):
            rows.append({"arm": arm, "seed": seed, "measure": "test_acc", "level": None,
                         "value": acc})  # fmt: skip
            rows.append({"arm": arm, "seed": seed, "measure": "weight-noise/drop", "level": 0.2,
                         "value": drop})  # fmt: skip
    return rows


def test_published_directions_get_corrected_verdicts_in_the_report(tmp_path):
    from tdsnn.experiment.report import write_report
    from tdsnn.experiment.results import judge_directions
    from tdsnn.experiment.spec import parse_spec
    from tdsnn.experiment.stats import adjust_p, summarize

    spec = parse_spec({**SPEC, "primary": ["more", "less", "same"], "directions": [
        _direction("more", "ReLU more accurate", "test_acc", "higher"),
        _direction("less", "ReLU less accurate", "test_acc", "lower"),
        _direction("same", "same drop", "weight-noise/drop", "lower", level=0.2, margin=0.05),
        _direction("never", "never measured", "pruning-channels/random/auc", "higher"),
        _direction("explore", "ReLU more accurate, again", "test_acc", "higher"),
    ]})  # fmt: skip
    rows = _direction_rows()
    found = judge_directions(spec, rows)
    assert [d["verdict"] for d in found] == [
        "reproduces", "opposite to published", "equivalent within ±0.05", "not measured",
        "reproduces"]  # fmt: skip
    assert [d["primary"] for d in found] == [True, True, True, False, False]
    p = [d["p"] for d in found[:3]]
    assert [d["p_corrected"] for d in found[:3]] == pytest.approx(adjust_p(p, "holm").tolist())
    assert math.isnan(found[4]["p_corrected"]) and found[4]["p"] == found[0]["p"]
    assert found[0]["n"] == 4 and found[0]["mean_diff"] == pytest.approx(0.1025, abs=1e-9)
    assert found[0]["p_sign_flip"] == pytest.approx(2 / 16)
    assert found[2]["key"] == "weight-noise/drop@0.2"
    # power: three primary directions are tested at alpha / 3
    assert found[0]["mde"] == pytest.approx(
        min_detectable_effect(found[0]["sd"], 4, 0.05 / 3), rel=1e-9)  # fmt: skip
    summary = {**summarize(rows), "directions": found, "correction": "holm"}
    text = write_report(rows, summary, tmp_path, title="t", figures=spec.figures).read_text()
    assert spec.figures is None and (tmp_path / "measure_test-acc.png").is_file()
    only = write_report(rows, summary, tmp_path / "few", figures=["weight-noise/drop"])
    assert sorted(p.name for p in only.parent.glob("*.png")) == ["curve_weight-noise-drop.png"]
    assert text.index("## Published directions") < text.index("### Primary")
    assert text.index("### Primary") < text.index("### Exploratory") < text.index("## Measures")
    assert "| more | ReLU more accurate | paper |" in text
    assert "**opposite to published**" in text and "reproduces (exploratory)" in text


def test_a_direction_not_shown_states_its_minimum_detectable_effect(tmp_path):
    from tdsnn.experiment.report import write_report
    from tdsnn.experiment.results import judge_directions
    from tdsnn.experiment.spec import parse_spec

    rows = [{**r, "value": r["value"] + (0.05 * (-1) ** r["seed"] if r["arm"] == "none" else 0)}
            for r in _direction_rows()]  # fmt: skip
    spec = parse_spec({**SPEC, "directions": [_direction("drop", "d", "weight-noise/drop",
                                                         "higher", level=0.2)]})  # fmt: skip
    (found,) = judge_directions(spec, rows)
    assert found["verdict"] == "not shown" and found["mde"] > abs(found["mean_diff"])
    assert found["margin"] is None and "tost" not in found  # no margin names weight-noise/drop
    text = write_report(rows, {"directions": [found]}, tmp_path, figures=[]).read_text()
    assert f"**not shown (MDE {found['mde']:.4g})**" in text


def test_sheets_from_plans_the_source_runs_sheets_and_waits_for_it(tmp_path):
    from tdsnn.experiment.runner import Workers

    spec = {**SPEC, "arms": {"swapped": {"topo": "stc", "sheets-from": "none"}, "none": {}}}
    plans = load_spec(write_spec(tmp_path / "spec.yaml", spec)).plan()
    swapped = [p for p in plans if p.arm == "swapped"]
    assert [p.sheets_from for p in swapped] == ["runs/none/seed-0", "runs/none/seed-1"]
    assert swapped[1].config.sheet.positions == "runs/none/seed-1/sheets.pt"
    assert all(p.sheets_from is None for p in plans if p.arm == "none")

    started = []

    class Recorder(Workers):  # starts nothing; a run "trains" by being started
        def _start(self, phase, plan, epoch):
            started.append(plan.name)
            return subprocess.Popen([sys.executable, "-c", "pass"])

    trained: set[str] = set()

    def waiting(plan):
        done = {name for name in started}  # a started source counts as trained once it ends
        trained.update(done)
        return plan.sheets_from is not None and plan.sheets_from[5:] not in trained

    from tdsnn.runtime import StopSignals

    order = sorted(plans, key=lambda p: (p.seed, p.arm != "swapped"))  # dependents first
    with StopSignals() as signals:
        queue = Recorder(tmp_path, 1, 1, signals, True, waiting, command="tdsnn experiment ...")
        queue.run("train", [(p, None) for p in order])
    assert started.index("none/seed-0") < started.index("swapped/seed-0")
    assert started.index("none/seed-1") < started.index("swapped/seed-1")
    assert sorted(started) == sorted(p.name for p in plans)


@pytest.mark.slow
def test_an_arm_trains_on_the_swapped_sheets_of_its_source_run(tmp_path):
    spec = {
        **SPEC,
        "arms": {"none": {"topo": "none"}, "swapped": {"topo": "stc", "sheets-from": "none"}},
        "seeds": "0",
        "measures": {"summary": ["test_acc"], "topography": ["V1"]},
    }
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    out = tmp_path / "out"
    process = _experiment(spec_path, out)
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()
    source = torch.load(out / "runs/none/seed-0/sheets.pt", weights_only=True)
    assert source["format"] == "tdsnn-sheets" and not source["stopped"]
    saved = torch.load(out / "runs/swapped/seed-0/last.pt", weights_only=False)
    for area, state in source["sheets"].items():
        assert torch.equal(saved["sheets"][area]["positions"], state["positions"])
    config = yaml.safe_load((out / "runs/swapped/seed-0/config.yaml").read_text())
    assert config["sheet"]["positions"] == str(out / "runs/none/seed-0/sheets.pt")
    _, arms = _results(out)
    assert set(arms) == {"none", "swapped"}
