"""``tdsnn experiment report DIR`` and ``tdsnn experiment SPEC --plan PILOT_DIR``: statistics
recomputed from ``results.csv`` without retraining, seeds planned from a pilot, bad input as
one line, and every committed report in ``docs/`` as the current statistics print it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tdsnn.cli import main
from tdsnn.experiment.results import FIELDS, read_results, write_csv
from tdsnn.experiment.stats import adjust_p, seeds_needed

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "toy",
    "base": {"area-stack": "v1-it", "width": 0.0625, "image-size": 16, "epochs": 1},
    "arms": {"none": {"topo": "none"}, "stc": {"topo": "stc"}},
    "seeds": "0-5",
    "measures": {"summary": ["test_acc"], "topography": ["V1"]},
    "equivalence": {"test_acc": 0.01},
    "directions": [
        {"name": "cost", "claim": "STC costs accuracy", "arms": ["none", "stc"],
         "measure": "test_acc", "expect": "lower"},
        {"name": "map", "claim": "STC makes maps", "arms": ["none", "stc"],
         "measure": "topography_score/V1", "expect": "higher"},
    ],
}  # fmt: skip


def _folder(tmp_path: Path, spec: dict = SPEC) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(6):
        base = rng.normal(0.9, 0.02)
        for arm, shift, score in (("none", 0.0, 0.0), ("stc", -0.001, 0.2)):
            rows.append({"arm": arm, "seed": seed, "measure": "test_acc", "level": None,
                         "value": base + shift + rng.normal(0, 0.003)})  # fmt: skip
            rows.append({"arm": arm, "seed": seed, "measure": "topography_score/V1",
                         "level": None, "value": score + rng.normal(0, 0.02)})  # fmt: skip
    folder = tmp_path / "experiment"
    folder.mkdir()
    write_csv(folder, rows)
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return folder, spec_path


def _one_line(code: int, capsys, *fragments: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_report_recomputes_the_statistics_of_a_folder(tmp_path, capsys):
    folder, spec_path = _folder(tmp_path)
    (folder / "experiment.json").write_text(json.dumps({"spec": str(spec_path)}))
    (folder / "summary.json").write_text(json.dumps({"experiment": {"measured_epochs": {"a": 3},
                                                                    "seconds": 12.5}}))  # fmt: skip
    assert main(["experiment", "report", str(folder)]) == 0
    assert "summary.json and report.md" in capsys.readouterr().out
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["experiment"]["measured_epochs"] == {"a": 3}  # kept: no runs to read it from
    assert summary["experiment"]["seconds"] == 12.5
    assert summary["correction"] == "holm" and summary["interval"] == "Student t"
    cost, maps = summary["directions"]
    assert maps["verdict"] == "reproduces" and cost["verdict"] == "equivalent within ±0.01"
    assert [cost["p_corrected"], maps["p_corrected"]] == pytest.approx(
        adjust_p([cost["p"], maps["p"]], "holm").tolist())  # fmt: skip
    assert summary["arms"]["stc"]["test_acc"]["method"] == "t"
    text = (folder / "report.md").read_text()
    assert "**reproduces**" in text and "**equivalent within ±0.01**" in text

    # the statistics keys may change: the same results under BH and no margins
    spec = {**SPEC, "correction": "bh", "equivalence": None, "primary": ["map"]}
    spec_path.write_text(yaml.safe_dump(spec))
    assert main(["experiment", "report", str(folder), "--spec", str(spec_path)]) == 0
    again = json.loads((folder / "summary.json").read_text())
    assert again["correction"] == "bh" and not again["directions"][0]["primary"]
    assert again["directions"][1]["p_corrected"] == pytest.approx(maps["p"])  # a family of one
    assert "tost" not in again["differences"]["stc - none"]["test_acc"]
    assert again["directions"][0]["verdict"] == "not shown"  # no margin: no equivalence
    assert "not shown (MDE" in (folder / "report.md").read_text()


def test_report_refuses_what_it_cannot_recompute(tmp_path, capsys):
    folder, spec_path = _folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line(main(["experiment", "report", str(empty), "--spec", str(spec_path)]), capsys,
              "results.csv does not exist")  # fmt: skip
    _one_line(main(["experiment", "report", str(folder)]), capsys,
              "has no readable experiment.json", "--spec")  # fmt: skip
    _one_line(main(["experiment", "report", str(tmp_path / "nowhere")]), capsys,
              "does not exist or is not a folder")  # fmt: skip
    _one_line(main(["experiment", "report"]), capsys, "needs the experiment folder")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**SPEC, "arms": {**SPEC["arms"], "stc2": {"topo": "stc"}}}))
    _one_line(main(["experiment", "report", str(folder), "--spec", str(other)]), capsys,
              "has arms ['none', 'stc', 'stc2']", "has ['none', 'stc']")  # fmt: skip
    (folder / "results.csv").write_text(",".join(FIELDS) + "\nnone,zero,test_acc,,0.9\n")
    _one_line(main(["experiment", "report", str(folder), "--spec", str(spec_path)]), capsys,
              "results.csv cannot be read")  # fmt: skip
    before = (folder / "results.csv").read_text()
    assert not (folder / "summary.json").exists() and (folder / "results.csv").read_text() == before


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"correction": "fdr"}, "correction must be one of ['holm', 'bh', 'none']"),
        ({"primary": ["cost", "speed"]}, "primary names direction(s) ['speed'] that do not exist"),
        ({"interval": "bca"}, "interval: bca needs at least 10 seeds (the spec has 6)"),
        ({"equivalence": 0.01}, "one margin (0.01) for measures in different units"),
    ],
)
def test_report_with_a_bad_spec_is_one_line(tmp_path, capsys, change, fragment):
    folder, spec_path = _folder(tmp_path)
    spec_path.write_text(yaml.safe_dump({**SPEC, **change}))
    _one_line(main(["experiment", "report", str(folder), "--spec", str(spec_path)]), capsys,
              fragment)  # fmt: skip


def test_plan_prints_the_seeds_each_direction_needs(tmp_path, capsys):
    folder, spec_path = _folder(tmp_path)
    assert main(["experiment", str(spec_path), "--plan", str(folder)]) == 0
    out = capsys.readouterr().out
    rows = read_results(folder)
    pairs = {}
    for measure in ("test_acc", "topography_score/V1"):
        none = np.array(
            [r["value"] for r in rows if r["arm"] == "none" and r["measure"] == measure]
        )
        stc = np.array([r["value"] for r in rows if r["arm"] == "stc" and r["measure"] == measure])
        pairs[measure] = stc - none
    d = pairs["test_acc"]
    expected = seeds_needed(abs(d.mean()), d.std(ddof=1), 0.05 / 2)  # two primary directions
    line = next(x for x in out.splitlines() if x.startswith("cost "))
    assert line.split()[-1] == str(expected) and expected > 6
    assert main(["experiment", str(spec_path), "--plan", str(folder), "--effect", "cost=0.001",
                 "--effect", "map=0.5"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("cost "))
    assert line.split()[-1] == str(seeds_needed(0.001, d.std(ddof=1), 0.025))
    line = next(x for x in out.splitlines() if x.startswith("map "))
    sd = pairs["topography_score/V1"].std(ddof=1)
    assert line.split()[-1] == str(seeds_needed(0.5, sd, 0.025)) == "3"  # large against sd


def test_plan_and_run_bad_input_is_one_line(tmp_path, capsys):
    folder, spec_path = _folder(tmp_path)
    _one_line(main(["experiment", str(spec_path), "--plan", str(folder), "--effect", "big"]),
              capsys, "--effect takes a number or NAME=NUMBER")  # fmt: skip
    _one_line(main(["experiment", str(spec_path), "--plan", str(folder), "--effect", "x=1"]),
              capsys, "no direction named 'x'")  # fmt: skip
    _one_line(main(["experiment", str(spec_path), "--plan", str(tmp_path)]), capsys,
              "results.csv does not exist")  # fmt: skip
    _one_line(main(["experiment", str(spec_path)]), capsys, "needs --out DIR")
    _one_line(main(["experiment", str(spec_path), "extra"]), capsys, "unexpected argument")


COMMITTED = {  # report folder -> the spec it was run from
    "docs/reproduction": "configs/experiments/reproduction.yaml",
    "docs/reproduction/every-layer": "configs/experiments/reproduction-every-layer.yaml",
    "docs/reproduction/converged": "configs/experiments/reproduction-converged.yaml",
    "docs/reproduction/wsas-paper": "configs/experiments/wsas-paper.yaml",
    "docs/reproduction/wsas-paper-every-layer": "configs/experiments/wsas-paper-every-layer.yaml",
    "docs/reproduction/wsas-paper-lambda-3": "configs/experiments/wsas-paper-lambda-3.yaml",
    "docs/reproduction/wsas-paper-lambda-0.3": "configs/experiments/wsas-paper-lambda-0.3.yaml",
    "docs/reproduction/wsas-ladder": "configs/experiments/wsas-ladder.yaml",
    "docs/experiments/topography-cost": "configs/experiments/topography-cost.yaml",
    "docs/experiments/cortex-maps": "configs/experiments/cortex-maps.yaml",
    "docs/experiments/pretrained-swap": "configs/experiments/pretrained-swap.yaml",
    "docs/experiments/temporal": "configs/experiments/temporal.yaml",
}


def test_every_committed_report_is_listed():
    found = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "docs").rglob("results.csv")}
    assert found == set(COMMITTED)


@pytest.mark.slow
@pytest.mark.parametrize("folder", sorted(COMMITTED))
def test_committed_reports_are_what_the_current_statistics_print(tmp_path, folder):
    """Each report in docs/ was regenerated with ``tdsnn experiment report``: doing it again
    gives the committed summary.json and report.md."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / folder, copy)
    assert main(["experiment", "report", str(copy), "--spec", str(ROOT / COMMITTED[folder])]) == 0
    for name in ("summary.json", "report.md"):
        assert (copy / name).read_text() == (ROOT / folder / name).read_text(), name


VERDICT = re.compile(r"\*\*(reproduces|opposite to published|equivalent within ±[0-9.]+|not shown|"
                     r"reverses|inconclusive)\*\*")  # fmt: skip


def test_the_readme_prints_only_verdicts_its_reports_print():
    printed = set()
    for folder in COMMITTED:
        summary = json.loads((ROOT / folder / "summary.json").read_text())
        printed |= {d["verdict"] for d in summary.get("directions", [])}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    used = {m.group(1) for page in pages for m in VERDICT.finditer(page.read_text())}
    assert used and used <= printed, used - printed
