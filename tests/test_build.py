"""The kernel build cache: a compiler-flag change builds a new library."""

from tdsnn.ops import build


def test_library_paths_follow_the_compiler_flags(monkeypatch):
    before = {cuda: build.library_path(cuda) for cuda in (False, True)}
    for which, changes in (("cpu", {False}), ("nvcc", {True}), ("cuda", {True})):
        flags = {**build.COMPILE_FLAGS, which: (*build.COMPILE_FLAGS[which], "-ffast-math")}
        monkeypatch.setattr(build, "COMPILE_FLAGS", flags)
        after = {cuda: build.library_path(cuda) for cuda in (False, True)}
        assert {cuda for cuda in after if after[cuda] != before[cuda]} == changes, which
        monkeypatch.undo()
