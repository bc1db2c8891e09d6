"""The kernel build cache: a compiler-flag change builds a new library."""

from pathlib import Path

from tdsnn.ops import build


def test_library_paths_follow_the_compiler_flags(monkeypatch):
    before = {cuda: build.library_path(cuda) for cuda in (False, True)}
    for which, changes in (("cpu", {False}), ("nvcc", {True}), ("cuda", {True})):
        flags = {**build.COMPILE_FLAGS, which: (*build.COMPILE_FLAGS[which], "-ffast-math")}
        monkeypatch.setattr(build, "COMPILE_FLAGS", flags)
        after = {cuda: build.library_path(cuda) for cuda in (False, True)}
        assert {cuda for cuda in after if after[cuda] != before[cuda]} == changes, which
        monkeypatch.undo()


def test_a_checkout_builds_its_own_sources():
    """The kernels built are those beside the imported ``tdsnn``, also where another checkout of
    the project is installed in editable mode (its ``tdsnn.cuda_kernels`` is that checkout's)."""
    checkout = Path(build.__file__).resolve().parents[2] / "cuda_kernels"
    assert all(path.parent == checkout for path in build.source_files(cuda=True))
    assert checkout / "lif_math.h" in build.header_files(checkout)


def test_the_cpu_library_is_built_for_the_host_cpu(monkeypatch):
    before = {cuda: build.library_path(cuda) for cuda in (False, True)}
    monkeypatch.setattr(build, "host_cpu", lambda: "another CPU")
    after = {cuda: build.library_path(cuda) for cuda in (False, True)}
    native = bool(build._native_flags())
    assert (after[False] != before[False]) == native  # x86-64: compiled with -march=native
    assert after[True] == before[True]
    assert "-ffp-contract=off" in build.COMPILE_FLAGS["cpu"]  # the same bits on every CPU


def test_host_cpu_names_the_processor():
    assert build.host_cpu().strip()
