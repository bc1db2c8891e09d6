"""keep_freed_memory: large tensors reuse freed heap memory instead of faulting in fresh pages;
off where the user opts out or sets glibc's own variables; applied by the tdsnn command."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import CHILD_ENV

from tdsnn import host_memory
from tdsnn.host_memory import keep_freed_memory

glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc (Linux)"
)

# Page faults of writing a fresh 80 MiB tensor, per allocation over 6 allocations, after a few
# steps' worth of tensors alive at once and one after another (glibc's heap needs a few cycles
# to settle).
_FAULTS = """
import resource, sys, torch
from tdsnn.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
n = 80 * 2**20 // 4
for _ in range(3):
    a = torch.empty(n).fill_(1); b = torch.empty(n).fill_(1); del a, b
    for _ in range(6):
        torch.empty(n).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(6):
    torch.empty(n).fill_(1)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 6
print(applied, faults / (n * 4 / 4096))
"""


def _faults_per_page(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         env=CHILD_ENV, timeout=120, check=True).stdout.split()  # fmt: skip
    return out[0] == "True", float(out[1])


@glibc_only
def test_freed_tensors_are_reused_without_page_faults():
    applied, kept = _faults_per_page("keep")
    assert applied
    assert kept < 0.05  # every page of the fresh tensor was one already faulted in
    applied, system = _faults_per_page("system")
    assert not applied
    assert system > 0.9  # glibc's default: a fresh mapping, one fault per page


@pytest.mark.parametrize("variable", [host_memory.OPT_OUT, "MALLOC_MMAP_THRESHOLD_",
                                      "MALLOC_TRIM_THRESHOLD_"])  # fmt: skip
def test_left_alone_where_the_environment_says(monkeypatch, variable):
    monkeypatch.setenv(variable, "1")
    assert keep_freed_memory() is False


def test_the_tdsnn_command_applies_it(monkeypatch):
    from tdsnn import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(True))
    assert cli.main(["info"]) == 0
    assert calls == [True]
