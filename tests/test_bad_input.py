"""Every bad option value or path is one line on stderr and a non-zero exit, never a traceback."""

import pytest
import torch

from tdsnn.cli import main
from tdsnn.commands.train import TRAIN_OPTIONS
from tdsnn.config import load_config

NUMERIC = {flag: key for flag, (key, kind, _) in TRAIN_OPTIONS.items() if kind in (int, float)}
ZERO_IS_VALID = {"--alpha", "--beta", "--gamma", "--topo-warmup", "--weight-decay", "--seed",
                 "--num-workers", "--val-size", "--momentum"}  # fmt: skip
CASES = [
    (flag, value)
    for flag in NUMERIC
    for value in ("0", "-1", "nan", "1e30")
    if not (value == "0" and flag in ZERO_IS_VALID)
]


def assert_one_line(code, capsys, *fragments):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_every_numeric_option_is_covered():
    assert len(NUMERIC) >= 15 and {"--batch-size", "--lr", "--epochs", "--seed"} <= set(NUMERIC)


@pytest.mark.parametrize("flag, value", CASES)
def test_bad_numeric_option_is_one_line(flag, value, tmp_path, capsys):
    code = main(["train", flag, value, "--quiet", "--out", str(tmp_path / "run")])
    assert_one_line(code, capsys, NUMERIC[flag])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", sorted(ZERO_IS_VALID))
def test_zero_is_accepted_where_it_means_something(flag):
    config = load_config(None, {NUMERIC[flag]: "0"})
    section, key = NUMERIC[flag].split(".")
    assert getattr(getattr(config, section), key) == 0


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("optim:\n  epochs: .inf\n", "optim.epochs must be an integer"),
        ("optim:\n  batch_size: .nan\n", "optim.batch_size must be an integer"),
        ("optim:\n  lr: .nan\n", "optim.lr must be a finite number"),
        ("model: {width: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_yaml_values_are_one_line(text, fragment, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert_one_line(main(["train", "--config", str(path)]), capsys, fragment)


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--momentum", "-0.5"], "optim.momentum must be a finite number in [0, 1]"),
        (["--optimizer", "rmsprop"], "optim.optimizer must be one of"),
        (["--schedule", "linear"], "optim.schedule must be one of"),
        (["--select", "best"], "optim.select must be one of"),
        (["--normalize", "0.1307,0"], "data.normalize must be MEAN,STD"),
        (["--normalize", "0.1307,-1"], "STD > 0"),
        (["--normalize", "0.1307"], "data.normalize must be MEAN,STD"),
        (["--normalize", "mean,std"], "data.normalize must be MEAN,STD"),
        (["--normalize", "0.1,0.3", "--encoding", "rate"], "--encoding direct"),
        (["--select", "final", "--until-plateau", "2", "--val-size", "8"], "drop one"),
        (["--optimizer", "sgd", "--cuda-graphs"], "without --cuda-graphs"),
    ],
)
def test_bad_recipe_option_is_one_line(argv, fragment, tmp_path, capsys):
    code = main(["train", *argv, "--quiet", "--out", str(tmp_path / "run")])
    assert_one_line(code, capsys, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag", ["--steps", "--swaps-per-step"])
def test_sheet_optimize_counts_must_be_positive(flag, tmp_path, capsys):
    assert_one_line(main(["sheet", "optimize", str(tmp_path), flag, "0"]), capsys, flag)


def paths(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    file = tmp_path / "file.txt"
    file.write_text("not a tdsnn file")
    missing = tmp_path / "missing"
    return folder, file, missing


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda f, x, m: ["train", "--config", str(m)], "does not exist"),
        (lambda f, x, m: ["train", "--config", str(f)], "is a folder"),
        (lambda f, x, m: ["train", "--dataset", "mnist", "--data-root", str(m)], "missing"),
        (lambda f, x, m: ["train", "--dataset", "mnist", "--data-root", str(x)], "file.txt"),
        (lambda f, x, m: ["train", "--sheets", str(m), "--out", str(f / "r")], "does not exist"),
        (lambda f, x, m: ["train", "--sheets", str(f), "--out", str(f / "r")], "is a folder"),
        (lambda f, x, m: ["train", "--out", str(x)], "is a file"),
        (lambda f, x, m: ["train", "--resume", "--out", str(f)], "does not exist"),
        (lambda f, x, m: ["train", "--resume", "--out", str(m)], "does not exist"),
        (lambda f, x, m: ["train", "--resume", "--out", str(x)], "is a file"),
        (lambda f, x, m: ["sheet", "optimize", str(m)], "does not exist"),
        (lambda f, x, m: ["sheet", "optimize", str(x)], "is a file"),
        (lambda f, x, m: ["sheet", "optimize", str(f)], "does not exist"),
    ],
)
def test_bad_path_is_one_line(build, fragment, tmp_path, capsys):
    folder, file, missing = paths(tmp_path)
    args = build(folder, file, missing)
    assert_one_line(main([*args, "--quiet"]), capsys, fragment)
    assert file.read_text() == "not a tdsnn file"  # a failed command never touches a file


def test_checkpoint_with_missing_entries_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "tdsnn-checkpoint", "version": 2, "config": {}}, run / "last.pt")
    code = main(["train", "--resume", "--out", str(run), "--quiet"])
    assert_one_line(code, capsys, "last.pt", "'model'")


# Checks declared once (tdsnn.fields.option): a Python call names the parameter, the command
# line the flag. (declaration, keyword arguments, parameter, flag on the command line)
DECLARED = [
    ("tdsnn.options:SwapOptions", {"steps": 0}, "steps", ["sheet", "optimize", "r"]),
    ("tdsnn.options:SwapOptions", {"swaps_per_step": 0}, "swaps_per_step",
     ["sheet", "optimize", "r"]),
    ("tdsnn.options:SwapOptions", {"seed": -1}, "seed", ["sheet", "optimize", "r"]),
    ("tdsnn.evaluate.options:EvaluateOptions", {"repeats": 0}, "repeats",
     ["evaluate", "r", "--out", "o"]),
    ("tdsnn.evaluate.options:EvaluateOptions", {"test_size": 0}, "test_size",
     ["evaluate", "r", "--out", "o"]),
    ("tdsnn.evaluate.options:EvaluateOptions", {"batch_size": 0}, "batch_size",
     ["evaluate", "r", "--out", "o"]),
    ("tdsnn.options:TimingOptions", {"repeats": 0}, "repeats", ["bench", "--device", "cpu"]),
    ("tdsnn.options:TimingOptions", {"warmup": -1}, "warmup", ["bench", "--device", "cpu"]),
]  # fmt: skip


@pytest.mark.parametrize(("where", "kwargs", "name", "argv"), DECLARED)
def test_a_declared_check_names_the_parameter_in_python_and_the_flag_on_the_command_line(
    where, kwargs, name, argv, capsys
):
    import importlib

    from tdsnn.errors import ConfigError

    module, cls = where.split(":")
    with pytest.raises(ConfigError, match=rf"^{name} must be an integer in \["):
        getattr(importlib.import_module(module), cls)(**kwargs)
    flag = "--" + name.replace("_", "-")
    code = main([*argv, flag, str(next(iter(kwargs.values())))])
    assert_one_line(code, capsys, f"{flag} must be an integer in [")


@pytest.mark.slow
def test_evaluate_runs_checks_its_sizes_in_parameter_terms(tmp_path):
    from tdsnn.errors import ConfigError
    from tdsnn.evaluate.report import evaluate_runs

    with pytest.raises(ConfigError, match=r"^repeats must be an integer in \[1, 100\], got 0"):
        evaluate_runs([tmp_path / "run"], tmp_path / "out", repeats=0)


def test_library_messages_map_to_the_flags_of_the_command_line():
    from tdsnn.fields import as_flags

    assert as_flags("out x is a folder", ["out"]) == "--out x is a folder"
    assert as_flags("resume: none; start one with resume=False", ["resume"]) == (
        "--resume: none; start one without --resume"
    )
    assert (
        as_flags("kept (continue with resume=True)", ["resume"]) == "kept (continue with --resume)"
    )
    assert as_flags("pass layers='all' instead", ["layers"]) == "pass --layers all instead"
    assert as_flags("recorded with another dt_ms", ["dt_ms"]) == "recorded with another --dt-ms"
    assert as_flags("outputs differ", ["out"]) == "outputs differ"  # a word, not the parameter


@pytest.mark.slow
def test_record_and_evaluate_errors_name_parameters_in_python_and_flags_on_the_command_line(
    spiking_run, tmp_path, capsys
):
    from tdsnn.cli import main
    from tdsnn.errors import ConfigError
    from tdsnn.evaluate.report import evaluate_runs
    from tdsnn.record import record_run

    with pytest.raises(ConfigError, match=r"^out .* is a folder"):
        record_run(spiking_run, tmp_path)
    assert_one_line(main(["record", str(spiking_run), "--out", str(tmp_path)]), capsys, "--out")
    with pytest.raises(ConfigError, match=r"^resume: there is no interrupted .*resume=False"):
        record_run(spiking_run, tmp_path / "r.h5", resume=True)
    code = main(["record", str(spiking_run), "--out", str(tmp_path / "r.h5"), "--resume"])
    assert_one_line(code, capsys, "--resume: there is no", "without --resume")
    with pytest.raises(ConfigError, match=r"^layers: run .* has no layer"):
        evaluate_runs([spiking_run], tmp_path / "e", layers=("V9",))
    code = main(["evaluate", str(spiking_run), "--out", str(tmp_path / "e"), "--layers", "V9"])
    assert_one_line(code, capsys, "--layers: run")
