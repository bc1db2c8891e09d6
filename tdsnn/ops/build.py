"""Just-in-time build of the compiled ops in ``cuda_kernels/`` (DESIGN §9).

Two libraries, compiled with ``torch.utils.cpp_extension.load`` into a cache folder keyed by
their sources' hash and the torch version (and, for CUDA, the target architecture), and loaded
with ``torch.ops.load_library``:

- ``tdsnn_ops`` (``ops.cpp``, ``lif_cpu.cpp``, ``bn_lif_cpu.cpp``, ``swap_cpu.cpp``; the host
  C++ compiler with OpenMP): its ``TORCH_LIBRARY`` block defines the ``torch.ops.tdsnn``
  schemas, and it holds the CPU kernels.
- ``tdsnn_kernels`` (``lif.cu``, ``pairs.cu``, ``bn_lif.cu``; nvcc): the CUDA kernels,
  registered for the CUDA key of the schemas above, so it is loaded second.

Later calls in the same process, and later processes finding the cache, load the built
libraries without compiling.

Environment:

- ``TDSNN_CACHE``: cache folder (default ``~/.cache/tdsnn``); builds go to ``<cache>/kernels``.
- ``TDSNN_CUDA_ARCH``: compute capability to compile for, e.g. ``9.0`` (default: the first
  visible GPU's; ``8.0`` when no GPU is visible, which is enough to check that the code builds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from tdsnn.errors import UserError

__all__ = [
    "BuildResult",
    "KernelBuildError",
    "build_kernels",
    "cache_dir",
    "cuda_home",
    "header_files",
    "kernel_folder",
    "library_path",
    "source_files",
]

CPU_EXTENSION = "tdsnn_ops"
CPU_SOURCES = ("ops.cpp", "lif_cpu.cpp", "bn_lif_cpu.cpp", "swap_cpu.cpp")
CUDA_EXTENSION = "tdsnn_kernels"
CUDA_SOURCES = ("lif.cu", "pairs.cu", "bn_lif.cu")


class KernelBuildError(UserError, RuntimeError):
    """The compiled ops could not be built or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class BuildResult:
    """Where the last library loaded is (the CUDA one when built), for which architecture
    (``"cpu"`` for the CPU library alone), and how long the build took (0: cached)."""

    library: Path
    arch: str
    seconds: float
    compiled: bool


def cache_dir() -> Path:
    """``$TDSNN_CACHE`` or ``~/.cache/tdsnn``."""
    root = os.environ.get("TDSNN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tdsnn"


def kernel_folder() -> Path:
    """``cuda_kernels/``: the one beside this ``tdsnn`` package in a source checkout (so that a
    second checkout builds its own sources, not those of the checkout installed in editable
    mode), else the installed package's ``tdsnn/cuda_kernels``."""
    checkout = Path(__file__).resolve().parents[2] / "cuda_kernels"
    if (checkout / CPU_SOURCES[0]).is_file():
        return checkout
    return Path(str(resources.files("tdsnn.cuda_kernels")))


def source_files(cuda: bool = False) -> list[Path]:
    """The ``cuda_kernels/`` sources of the CPU library, or (``cuda``) of the CUDA library."""
    folder = kernel_folder()
    return [folder / name for name in (CUDA_SOURCES if cuda else CPU_SOURCES)]


def header_files(folder: Path) -> list[Path]:
    """Every header in ``folder`` (both libraries' sources include them), in name order."""
    return sorted(folder.glob("*.h"))


def target_arch() -> str:
    """The compute capability to build for, as ``major.minor``."""
    arch = os.environ.get("TDSNN_CUDA_ARCH")
    if arch:
        return arch
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "8.0"


def cuda_home() -> Path:
    """The CUDA toolkit folder: ``$CUDA_HOME``/``$CUDA_PATH``, else found from ``nvcc``.

    ``nvcc`` may be a wrapper script outside the toolkit (``/usr/local/bin/nvcc``), so a
    candidate counts only if it holds ``include/cuda_runtime.h``.
    """
    if torch.version.cuda is None:
        raise KernelBuildError(
            f"torch {torch.__version__} is a CPU-only build; the CUDA kernels need a CUDA build "
            "of torch (the one on PyPI is)"
        )
    explicit = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if explicit:
        return Path(explicit)
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates += [Path("/usr/local/cuda"), Path(f"/usr/local/cuda-{torch.version.cuda}")]
    for folder in candidates:
        if (folder / "include" / "cuda_runtime.h").exists() and (folder / "bin").is_dir():
            return folder
    raise KernelBuildError(
        "the CUDA toolkit was not found (no nvcc on PATH and CUDA_HOME is not set); install "
        f"the toolkit matching torch's CUDA {torch.version.cuda}, set CUDA_HOME, or set "
        "TDSNN_KERNELS=reference"
    )


def _cpp_extension(home: Path | None):
    """``torch.utils.cpp_extension``, pointed at the toolkit ``home`` when given (it reads
    CUDA_HOME once, at import, and warns there when no GPU is visible: that warning is muted)."""
    if home is not None:
        os.environ.setdefault("CUDA_HOME", str(home))
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    if home is not None:
        cpp_extension.CUDA_HOME = str(home)
    return cpp_extension


def _native_flags() -> tuple[str, ...]:
    """``-march=native`` on x86-64: the CPU kernels' loops vectorise with the host's widest
    vectors (AVX2, AVX-512: 1.3-2x on the fused batch-norm + LIF kernels, benchmarks/RESULTS.md)
    instead of SSE2's. The library then runs on this CPU only; its cache key holds the CPU
    (:func:`host_cpu`)."""
    return ("-march=native",) if platform.machine().lower() in ("x86_64", "amd64") else ()


# Compiler flags per library, part of the cache key (a change rebuilds). -fno-trapping-math:
# the CPU kernels' loops with a reset select vectorise (no floating-point exceptions are
# trapped; the arithmetic itself is unchanged). -ffp-contract=off: no a·b + c is fused into one
# rounding, so the CPU outputs are the same to the bit whatever vectors the host has.
COMPILE_FLAGS = {
    "cpu": ("-O3", "-fopenmp", "-fno-trapping-math", "-ffp-contract=off", *_native_flags()),
    "cuda": ("-O3",),
    "nvcc": ("-O3", "--expt-relaxed-constexpr"),
}


def host_cpu() -> str:
    """The CPU that ``-march=native`` compiles for: its model and feature flags (Linux:
    ``/proc/cpuinfo``'s first ``model name`` and ``flags``), else the platform's names."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    found = {}
    for line in info:
        key, _, value = line.partition(":")
        found.setdefault(key.strip(), value.strip())
    parts = (found.get("model name"), found.get("flags"))
    if not all(parts):
        parts = (platform.machine(), platform.processor())
    return " ".join(p or "" for p in parts)


def library_path(cuda: bool = True) -> Path:
    """Where the library for these sources and this torch is built:
    ``<cache>/kernels/torch<version>-cpu-<hash>/tdsnn_ops.so`` for the CPU library, and
    ``<cache>/kernels/torch<version>-sm<arch>-<hash>/tdsnn_kernels.so`` for the CUDA one (the
    hashes cover every header in ``cuda_kernels/`` and the compiler flags, the CPU one the host
    CPU where it is compiled for it, and the CUDA one the schemas in ``ops.cpp`` too)."""
    sources = source_files(cuda)
    if cuda:  # the schemas it registers kernels for
        sources = [source_files(cuda=False)[0], *sources]
    sources += header_files(sources[0].parent)
    name = CUDA_EXTENSION if cuda else CPU_EXTENSION
    digest = hashlib.sha256(name.encode())
    flags = COMPILE_FLAGS["cuda"] + COMPILE_FLAGS["nvcc"] if cuda else COMPILE_FLAGS["cpu"]
    digest.update(" ".join(flags).encode())
    if not cuda and _native_flags():  # built for this CPU
        digest.update(host_cpu().encode())
    for path in sources:
        if not path.is_file():
            raise KernelBuildError(f"kernel source {path} is missing; reinstall tdsnn")
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    target = "sm" + target_arch().replace(".", "") if cuda else "cpu"
    key = f"torch{torch.__version__}-{target}-{digest.hexdigest()[:12]}".replace("+", "_")
    return cache_dir() / "kernels" / key / f"{name}.so"


def build_kernels(verbose: bool = False, cuda: bool = True) -> BuildResult:
    """Compile (or find in the cache) and load the CPU library, then (``cuda``) the CUDA one;
    ``KernelBuildError`` if either fails.

    The CUDA library builds without a GPU: with a CUDA build of torch and ``nvcc`` it compiles
    for ``TDSNN_CUDA_ARCH`` (default ``8.0``), which is enough to check that the code builds.
    """
    start = time.perf_counter()
    compiled = _build_one(verbose, cuda=False)
    if not cuda:
        return BuildResult(library_path(cuda=False), "cpu", time.perf_counter() - start, compiled)
    compiled = _build_one(verbose, cuda=True) or compiled
    library = library_path(cuda=True)
    return BuildResult(library, target_arch(), time.perf_counter() - start, compiled)


def _build_one(verbose: bool, cuda: bool) -> bool:
    """Build (unless cached) and load one library; whether it was compiled."""
    home = cuda_home() if cuda else None
    library = library_path(cuda)
    folder = library.parent
    if library.exists():
        try:
            torch.ops.load_library(str(library))
        except OSError as exc:
            raise KernelBuildError(
                f"loading {library} failed ({exc}); delete {folder} to rebuild"
            ) from exc
        return False
    folder.mkdir(parents=True, exist_ok=True)
    cpp_extension = _cpp_extension(home)
    previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = target_arch()
    try:
        cpp_extension.load(
            name=CUDA_EXTENSION if cuda else CPU_EXTENSION,
            sources=[str(p) for p in source_files(cuda)],
            build_directory=str(folder),
            extra_cflags=list(COMPILE_FLAGS["cuda" if cuda else "cpu"]),
            extra_cuda_cflags=list(COMPILE_FLAGS["nvcc"]),
            extra_ldflags=[] if cuda else ["-fopenmp"],
            with_cuda=cuda,
            is_python_module=False,
            verbose=verbose,
        )
    except Exception as exc:  # compiler errors arrive as RuntimeError / CalledProcessError
        lines = str(exc).strip().splitlines() or [repr(exc)]
        first_error = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
        which = "CUDA" if cuda else "CPU"
        raise KernelBuildError(
            f"building the tdsnn {which} kernels in {folder} failed ({first_error.strip()}); "
            "rerun `tdsnn info --build-kernels --verbose` to see the compiler output"
        ) from exc
    finally:
        if cuda and previous is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        elif cuda:
            os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    return True
