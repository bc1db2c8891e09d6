"""tdsnn bench: smoke tests of every suite with --quick sizes, the JSON, the table, the errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tdsnn.areas import AreaStack
from tdsnn.bench import default_sizes, default_suites, run_bench
from tdsnn.bench.report import format_table
from tdsnn.bench.step_variants import compare_outputs
from tdsnn.bench.timing import kernel_policy, measure, measure_round_robin
from tdsnn.bench.train_steps import make_step
from tdsnn.cli import main
from tdsnn.config import RunConfig
from tdsnn.peers.neurons import lif_paths, peer_modules, set_modules

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _time_rows(rows, **match):
    return [r for r in rows if r["kind"] == "time" and all(r.get(k) == v for k, v in match.items())]


@pytest.mark.slow
def test_cpu_step_quick_writes_json_and_prints_the_table_last(cpu_kernels, tmp_path, capsys):
    code = main(
        [
            "bench",
            "--device",
            "cpu",
            "--quick",
            "--suite",
            "cpu-step",
            "--out",
            str(tmp_path),
            "--repeats",
            "2",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "bench.json").read_text())
    assert {"environment", "kernels", "options", "suites"} <= set(results)
    env = results["environment"]
    for key in ("date", "command", "device_name", "torch", "tdsnn", "spikingjelly", "snntorch"):
        assert env[key], key
    rows = results["suites"]["cpu-step"]["rows"]
    for variant in ("tdsnn-kernel", "tdsnn-reference", "spikingjelly", "snntorch"):
        (row,) = _time_rows(rows, variant=variant, case="topo=stc")
        assert row["status"] == "ok" and row["median_ms"] > 0
        assert row["timing"]["repeats"] == 2
    (base,) = _time_rows(rows, variant="tdsnn-kernel", case="topo=stc")
    assert "fused CPU LIF" in base["implementation"]
    for peer in ("tdsnn-reference", "spikingjelly", "snntorch"):
        assert base[f"speedup_vs_{peer}"] > 0
    # the default model's step without the loss, the peers' too (only the neuron swapped)
    without = _time_rows(rows, case="topo=none")
    assert [r["variant"] for r in without] == ["tdsnn-kernel", "spikingjelly", "snntorch"]
    none = without[0]
    assert all(r["status"] == "ok" for r in without) and none["speedup_vs_spikingjelly"] > 0
    (peer,) = _time_rows(rows, variant="spikingjelly", case="topo=stc")
    assert "tdsnn's kernels elsewhere" in peer["implementation"]
    assert base["stc_overhead"] == pytest.approx(base["median_ms"] / none["median_ms"] - 1)
    (check,) = [r for r in rows if r["kind"] == "check"]
    assert set(check["outputs"]) == {"tdsnn-reference", "spikingjelly", "snntorch"}
    assert all(c["equal"] for c in check["outputs"].values()), check
    (breakdown,) = [r for r in rows if r["kind"] == "breakdown"]
    assert breakdown["variant"] == "tdsnn-kernel"
    assert set(breakdown["parts_ms"]) == {
        "conv", "conv+bn", "bn+lif", "lif", "stc", "optimizer", "data", "other"
    }  # fmt: skip
    assert breakdown["fused_bn_lif"]
    assert breakdown["method"] and all(
        v >= 0 for k, v in breakdown["parts_ms"].items() if k != "other"
    )
    table = (tmp_path / "table.txt").read_text().strip()
    assert out.rstrip().endswith(table)  # the table is the last thing printed
    assert "[cpu-step]" in table and "breakdown" in table and "spikingjelly" in table
    assert "stc overhead on the step" in table


def test_stc_overhead_of_the_variants_timed_with_and_without_the_loss():
    from tdsnn.bench.report import _overhead_lines, add_speedups

    def row(case, variant, ms):
        return {"kind": "time", "case": case, "variant": variant, "status": "ok", "median_ms": ms}

    rows = [row("topo=stc", "a", 30.0), row("topo=stc", "b", 45.0), row("topo=none", "a", 20.0)]
    add_speedups(rows)
    assert rows[0]["stc_overhead"] == pytest.approx(0.5)
    assert "stc_overhead" not in rows[1] and "stc_overhead" not in rows[2]
    assert _overhead_lines(rows) == [
        "  stc overhead on the step (topo=stc / topo=none - 1): a +50%"
    ]
    assert _overhead_lines(rows[1:]) == []


def test_swapped_networks_give_equal_outputs_and_gradients():
    config = RunConfig().with_overrides({"model.width": 0.0625, "data.image_size": 16})
    torch.manual_seed(0)
    model = AreaStack(config.model, num_classes=10)
    images = torch.rand(4, 3, 16, 16)
    originals = {p: model.get_submodule(p) for p in lif_paths(model)}
    grads = []
    for peer in (None, "spikingjelly", "snntorch"):
        set_modules(model, originals if peer is None else peer_modules(model, peer, CPU))
        x = images.clone().requires_grad_()
        model(x).logits.square().sum().backward()
        grads.append(x.grad)
    set_modules(model, originals)
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-4, atol=1e-6)
    from tdsnn.bench.step_variants import Variant

    variants = [Variant("tdsnn", None, None, "")]
    variants += [Variant(p, peer_modules(model, p, CPU), None, "") for p in PEERS]
    result = compare_outputs(model, images, variants, originals)
    assert set(result) == set(PEERS)
    assert all(r["equal"] and r["spikes_differing"] == 0 for r in result.values())
    assert all(isinstance(model.get_submodule(p), type(m)) for p, m in originals.items())


PEERS = ("spikingjelly", "snntorch")


def test_breakdown_replays_the_fused_step_and_its_parts_add_up(cpu_kernels, monkeypatch):
    """The breakdown captures and replays the step as it trains (every block's batch norm +
    LIF as the fused op, no wrapper left behind); its parts are non-negative and add up to the
    step within noise (one thread, so that a shared machine's other threads cannot
    oversubscribe the cores)."""
    import tdsnn.ops.bn_lif as bn_lif_module
    from tdsnn.areas import SeqConvBN, SpikingBlock
    from tdsnn.bench.step_breakdown import PARTS, _capture, _replay, step_breakdown

    config = RunConfig().with_overrides({"model.width": 0.0625, "data.image_size": 16})
    torch.manual_seed(0)
    model = AreaStack(config.model, num_classes=10)
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    step = make_step(model, config, images, labels, seed=0, synchronize=False)
    blocks = 2 * sum(isinstance(m, SpikingBlock) for m in model.modules())
    alone = 1 + sum(isinstance(getattr(m, "shortcut", None), SeqConvBN) for m in model.modules())
    fused = []
    kernel = bn_lif_module.bn_lif_kernel
    monkeypatch.setattr(bn_lif_module, "bn_lif_kernel", lambda *a: fused.append(1) or kernel(*a))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with kernel_policy("cuda"):
            calls, _, all_fused = _capture(step)
            assert all_fused and len(fused) == blocks
            _replay(calls["bn+lif"])()  # a forward to size the gradients, then the replay
            assert len(fused) == 3 * blocks
            row = step_breakdown(step, [(images, labels)], CPU, variant="tdsnn-kernel",
                                 warmup=1, repeats=5)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert all("forward" not in vars(m) and "spiking" not in vars(m) for m in model.modules())
    assert row["modules"] == {"conv": blocks, "conv+bn": alone, "bn+lif": blocks, "lif": 1}
    assert row["fused_bn_lif"] and set(row["parts_ms"]) == {*PARTS, "stc", "optimizer",
                                                            "other", "data"}  # fmt: skip
    ms = row["parts_ms"]
    assert all(v > 0 for k, v in ms.items() if k != "other"), ms
    assert ms["other"] >= -0.2 * row["step_ms"], (row["step_ms"], ms)
    parts = sum(v for k, v in ms.items() if k != "data")
    assert parts == pytest.approx(row["step_ms"])


@pytest.mark.parametrize("amp", [False, True])
def test_benchmarked_step_trains_and_autocasts_the_forward_when_asked(amp):
    config = RunConfig().with_overrides({"model.width": 0.0625, "data.image_size": 16})
    torch.manual_seed(0)
    model = AreaStack(config.model, num_classes=10)
    dtypes = []
    model.get_submodule(lif_paths(model)[0]).register_forward_hook(
        lambda module, args, out: dtypes.append(args[0].dtype)
    )
    before = [p.detach().clone() for p in model.parameters()]
    step = make_step(model, config, torch.rand(4, 3, 16, 16), torch.arange(4), seed=0, amp=amp)
    step()
    assert dtypes == [torch.bfloat16 if amp else torch.float32]
    assert all(p.isfinite().all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.slow
def test_every_suite_runs_on_the_cpu_with_quick_sizes(cpu_kernels):
    sizes = default_sizes(CPU, quick=True)
    results = run_bench(
        ("lif", "pairs", "step"), CPU, sizes, warmup=0, repeats=1, log=lambda line: None
    )
    json.dumps(results)  # serialisable as it is
    suites = results["suites"]
    assert all("error" not in s for s in suites.values()), suites
    lif = suites["lif"]["rows"]
    assert [r["gb_per_s"] for r in lif if r["kind"] == "copy"][0] > 0
    assert {r["variant"] for r in _time_rows(lif)} >= {"tdsnn-kernel", "tdsnn-reference"}
    for row in _time_rows(lif):
        assert row["status"] == "ok", row
        assert row["gb_per_s"] > 0
        assert row["spikes_differing_vs_reference"] < 0.01  # snntorch: x/tau in bf16
    pairs = suites["pairs"]["rows"]
    assert {r["case"] for r in _time_rows(pairs, status="ok")} == {
        "pair_similarity fwd",
        "pair_similarity fwd (tiles)",
        "pair_moments fwd+bwd (tiles)",
        "pearson_pairs fwd+bwd",
        "ccg_pairs fwd+bwd",
        "stc-dense fwd+bwd",
        "stc clusters fwd+bwd",
    }
    for case in ("pair_similarity fwd", "pair_similarity fwd (tiles)"):
        assert _time_rows(pairs, case=case, status="ok")[0]["fraction_of_floor"] > 0
    setup = next(r for r in pairs if r["kind"] == "setup")
    assert setup["tiles"] > 0 and 0 < setup["row_reads_per_pair"] < 2  # rows shared in tiles
    step = suites["step"]["rows"]
    assert {(r["case"], r["variant"]) for r in _time_rows(step, status="ok")} == {
        (f"topo={t}", v)
        for t in ("stc", "none")
        for v in ("tdsnn-kernel", "tdsnn-reference", "spikingjelly")
    }
    table = format_table(results)
    assert "[lif]" in table and "[pairs]" in table and "[step]" in table


def test_a_missing_peer_is_skipped_with_the_install_hint(monkeypatch):
    from tdsnn.bench.lif import _runners
    from tdsnn.bench.step_variants import peer_variants

    monkeypatch.setitem(sys.modules, "spikingjelly.activation_based.neuron", None)
    runners, missing = _runners(CPU)
    assert "spikingjelly" not in runners and "snntorch" in runners
    assert missing["spikingjelly"] == (
        "skipped: the bench comparison needs the 'spikingjelly' package: pip install 'tdsnn[bench]'"
    )
    config = RunConfig().with_overrides({"model.width": 0.0625, "data.image_size": 16})
    variants, notes = peer_variants(AreaStack(config.model, 10), CPU, list(PEERS), None)
    assert [v.name for v in variants] == ["snntorch"]
    assert notes == [{"kind": "note", "variant": "spikingjelly", "status": missing["spikingjelly"]}]


def test_timer_and_kernel_policy(monkeypatch):
    monkeypatch.setenv("TDSNN_KERNELS", "auto")
    with kernel_policy("reference"):
        assert os.environ["TDSNN_KERNELS"] == "reference"
    assert os.environ["TDSNN_KERNELS"] == "auto"
    calls = []
    timing = measure(lambda: calls.append(1), CPU, warmup=2, repeats=5)
    assert len(calls) == 7 and len(timing.samples_ms) == 5 and timing.clock == "perf_counter"
    order = []
    timings = measure_round_robin(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, CPU, warmup=1, repeats=2
    )
    assert order == ["a", "b"] * 3 and set(timings) == {"a", "b"}


def test_bad_options_are_one_line_errors(capsys):
    assert main(["bench", "--suite", "lif,nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown suite" in err and "cpu-step" in err
    assert main(["bench", "--device", "cpu", "--dtypes", "fp8"]) == 2
    assert "--dtypes" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err


@pytest.mark.slow
def test_benchmarks_run_py_is_the_same_command():
    env = {k: v for k, v in os.environ.items() if k != "TDSNN_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--suite", "x"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tdsnn bench: error: --suite 'x': unknown suite(s) ['x']; valid: lif, pairs, step, cpu-step"
    )


@pytest.mark.gpu
def test_cuda_suites_run_with_quick_sizes(kernels):
    cuda = torch.device("cuda")
    results = run_bench(
        ("lif", "pairs", "step"),
        cuda,
        default_sizes(cuda, quick=True),
        warmup=1,
        repeats=2,
        log=lambda line: None,
    )
    for name, suite in results["suites"].items():
        assert "error" not in suite, (name, suite.get("traceback"))
        for row in _time_rows(suite["rows"]):
            if row["variant"].startswith("tdsnn"):
                assert row["status"] == "ok", row
    for row in _time_rows(results["suites"]["lif"]["rows"], variant="tdsnn-kernel"):
        assert row["spikes_differing_vs_reference"] < 1e-3, row


def test_the_benchmarked_step_is_the_one_training_step():
    """Only tdsnn.step.backward_step zeroes gradients, backpropagates and steps an optimiser,
    called by train_step and its CUDA-graph capture; the trainer and ``tdsnn bench`` both call
    train_step, so no second copy of the step can drift."""
    import ast

    def calls(fn: ast.AST) -> set[str]:
        names, todo = set(), list(ast.iter_child_nodes(fn))
        while todo:
            node = todo.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # a nested function is checked on its own
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                names.add(node.func.attr)
            todo.extend(ast.iter_child_nodes(node))
        return names

    root = Path(__file__).resolve().parents[1] / "tdsnn"
    steps = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if {"zero_grad", "backward", "step"} <= calls(node):
                    steps.append(f"{path.relative_to(root.parent).as_posix()}:{node.name}")
    assert steps == ["tdsnn/step.py:backward_step"]
    step = (root / "step.py").read_text()
    assert step.count("backward_step(") == 3  # its definition, train_step, the capture
    trainer = (root / "train.py").read_text()
    bench = (root / "bench" / "train_steps.py").read_text()
    assert "train_step(" in trainer and "train_step(" in bench


def _tiny_step_sizes(device):
    import dataclasses

    return dataclasses.replace(default_sizes(device, quick=True), step_topos=("stc",))


def test_step_suite_on_the_cpu_lists_the_graphed_variant_as_skipped(cpu_kernels):
    results = run_bench(("step",), CPU, _tiny_step_sizes(CPU), warmup=0, repeats=1,
                        log=lambda line: None)  # fmt: skip
    rows = results["suites"]["step"]["rows"]
    (graphed,) = _time_rows(rows, variant="tdsnn-graphed")
    assert graphed == {
        "kind": "time",
        "case": "topo=stc",
        "variant": "tdsnn-graphed",
        "status": "skipped: CUDA graphs need a CUDA device",
    }
    ran = [r["variant"] for r in _time_rows(rows, status="ok")]
    assert ran == ["tdsnn-kernel", "tdsnn-reference", "spikingjelly"]
    (check,) = [r for r in rows if r["kind"] == "check"]
    assert "tdsnn-graphed" not in check["outputs"]
    table = format_table(results)
    header = next(line for line in table.splitlines() if line.lstrip().startswith("case"))
    assert header.split()[:5] == [
        "case", "tdsnn-kernel", "tdsnn-reference", "spikingjelly", "tdsnn-graphed"
    ]  # fmt: skip
    stc = next(line for line in table.splitlines() if line.lstrip().startswith("topo=stc"))
    assert stc.split()[4] == "skip"
    assert "  tdsnn-graphed: skipped: CUDA graphs need a CUDA device" in table.splitlines()


def _tiny_model():
    config = RunConfig().with_overrides({"model.width": 0.0625, "data.image_size": 16})
    torch.manual_seed(0)
    return config, AreaStack(config.model, num_classes=10)


def test_the_graphed_variant_is_tdsnn_step_graphed_step(monkeypatch):
    """The builder of tdsnn-graphed (and of benchmarks/cuda_graphs.py) steps with
    tdsnn.step.GraphedStep itself, on a copy of the model with the same weights and the
    capturable AdamW with make_step's rate and decay; its timed call is GraphedStep's."""
    import tdsnn.step
    from tdsnn.bench.step_variants import Variant, variant_fn
    from tdsnn.bench.train_steps import capturable_step
    from tdsnn.errors import ConfigError

    config, model = _tiny_model()
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    state = capturable_step(model, config, images, labels)
    assert type(state.graphed) is tdsnn.step.GraphedStep
    assert state.model is not model and state.graphed.model is state.model
    for (name, a), b in zip(model.state_dict().items(), state.model.state_dict().values(),
                            strict=True):  # fmt: skip
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr(), name
    eager = make_step(model, config, images, labels, seed=0).optimizer.param_groups[0]
    (group,) = state.optimizer.param_groups
    assert group["capturable"] and float(group["lr"]) == pytest.approx(eager["lr"])
    assert group["weight_decay"] == eager["weight_decay"]
    with pytest.raises(ConfigError, match="^--cuda-graphs needs --device cuda$"):
        state()  # the real GraphedStep refuses the CPU
    calls = []
    monkeypatch.setattr(tdsnn.step.GraphedStep, "__call__", lambda self, *a: calls.append(a))
    variant = Variant("tdsnn-graphed", None, "cuda", "", state)
    variant_fn(None, variant, {})()
    ((x, y),) = calls
    assert x is images and y is labels


def test_a_step_of_its_own_is_checked_from_the_shared_weights():
    """compare_outputs takes a variant's own step from the shared model's weights, copied
    into its model in place (where captured graphs read them), even after it has trained;
    its check has no spikes, and the report's check line says so by leaving them out."""
    from tdsnn.bench.report import _other_lines
    from tdsnn.bench.step_variants import Variant
    from tdsnn.bench.train_steps import capturable_step

    config, model = _tiny_model()
    images, labels = torch.rand(4, 3, 16, 16), torch.arange(4)
    own = capturable_step(model, config, images, labels, graphed=False)
    own.optimizer.param_groups[0]["capturable"] = False  # capturable steps need CUDA
    for _ in range(2):
        own()
    trained = own.model(images).logits.detach()
    pointers = [p.data_ptr() for p in own.model.parameters()]
    originals = {p: model.get_submodule(p) for p in lif_paths(model)}
    variants = [Variant("tdsnn", None, None, ""), Variant("own", None, None, "", own)]
    result = compare_outputs(model, images, variants, originals)
    assert result["own"]["equal"] and result["own"]["spikes_differing"] is None
    assert result["own"]["max_abs_diff"] < 1e-5
    assert (model(images).logits - trained).abs().max() > 1e-3  # the check could have failed
    assert [p.data_ptr() for p in own.model.parameters()] == pointers
    (line,) = _other_lines([{"kind": "check", "case": "c", "outputs": result}], ("check",))
    assert (
        line
        == f"  check c: own vs tdsnn logits equal (max |diff| {result['own']['max_abs_diff']:.2e})"
    )


@pytest.mark.gpu
def test_cuda_step_suite_times_the_graphed_step_checked_against_the_kernels(kernels):
    cuda = torch.device("cuda")
    results = run_bench(("step",), cuda, _tiny_step_sizes(cuda), warmup=1, repeats=2,
                        log=lambda line: None)  # fmt: skip
    rows = results["suites"]["step"]["rows"]
    (graphed,) = _time_rows(rows, variant="tdsnn-graphed")
    assert graphed["status"] == "ok", graphed
    assert graphed["median_ms"] > 0
    assert graphed["peak_mib"] > graphed["peak_above_start_mib"] >= 0  # its held state counted
    assert "CUDA graphs" in graphed["implementation"]
    (check,) = [r for r in rows if r["kind"] == "check"]
    out = check["outputs"]["tdsnn-graphed"]
    assert out["against"] == "tdsnn-kernel" and out["equal"], out
    assert 0 <= out["max_abs_diff"] < 1e-3 and out["spikes_differing"] is None
    (base,) = _time_rows(rows, variant="tdsnn-kernel")
    assert base["speedup_vs_tdsnn-graphed"] > 0
    assert "tdsnn-graphed vs tdsnn-kernel logits equal" in format_table(results)


def test_one_cuda_run_measures_every_suite_and_the_cpu_its_step():
    """The default run on CUDA includes cpu-step: the default model's (host-bound) step."""
    assert default_suites(torch.device("cuda")) == ("lif", "pairs", "step", "cpu-step")
    assert default_suites(torch.device("cpu")) == ("cpu-step",)


def test_the_kernel_timing_script_times_the_built_library(cpu_kernels):
    from tdsnn.ops.build import library_path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "kernel_ab.py"
    found = subprocess.run(
        [sys.executable, str(script), str(library_path(cuda=False)), "--threads", "1"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert found.stdout.startswith("1 thread(s): stats ")
    assert "forward" in found.stdout and found.stdout.rstrip().endswith("ms")
