"""Just-in-time build of the compiled ops in ``cuda_kernels/`` (DESIGN §9).

The sources are compiled with ``torch.utils.cpp_extension.load`` into a cache folder keyed by
the sources' hash, the torch and CUDA versions and the target architecture, and loaded with
``torch.ops.load_library``: their ``TORCH_LIBRARY`` block defines the ``torch.ops.tdsnn``
schemas and their CUDA kernels. Later calls in the same process, and later processes finding
the cache, load the built library without compiling.

Environment:

- ``TDSNN_CACHE``: cache folder (default ``~/.cache/tdsnn``); builds go to ``<cache>/kernels``.
- ``TDSNN_CUDA_ARCH``: compute capability to compile for, e.g. ``9.0`` (default: the first
  visible GPU's; ``8.0`` when no GPU is visible, which is enough to check that the code builds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

__all__ = [
    "BuildResult",
    "KernelBuildError",
    "build_kernels",
    "cache_dir",
    "cuda_home",
    "library_path",
    "source_files",
]

EXTENSION = "tdsnn_kernels"
SOURCES = ("ops.cpp", "lif.cu", "pairs.cu")


class KernelBuildError(RuntimeError):
    """The compiled ops could not be built or loaded; the message says why."""


@dataclass(frozen=True)
class BuildResult:
    """Where the library is, for which architecture, and how long the build took (0: cached)."""

    library: Path
    arch: str
    seconds: float
    compiled: bool


def cache_dir() -> Path:
    """``$TDSNN_CACHE`` or ``~/.cache/tdsnn``."""
    root = os.environ.get("TDSNN_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tdsnn"


def source_files() -> list[Path]:
    """The ``cuda_kernels/`` sources, in build order."""
    try:
        folder = Path(str(resources.files("tdsnn.cuda_kernels")))
    except ModuleNotFoundError:  # a source checkout on PYTHONPATH, not installed
        folder = Path(__file__).resolve().parents[2] / "cuda_kernels"
    return [folder / name for name in SOURCES]


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


def _cpp_extension(home: Path):
    """``torch.utils.cpp_extension`` pointed at the toolkit ``home`` (it reads CUDA_HOME once,
    at import, and warns there when no GPU is visible: that warning is muted)."""
    os.environ.setdefault("CUDA_HOME", str(home))
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    cpp_extension.CUDA_HOME = str(home)
    return cpp_extension


def library_path() -> Path:
    """Where the library for these sources, this torch and the target architecture is built:
    ``<cache>/kernels/torch<version>-sm<arch>-<hash of the sources>/tdsnn_kernels.so``."""
    digest = hashlib.sha256()
    for path in source_files():
        if not path.is_file():
            raise KernelBuildError(f"kernel source {path} is missing; reinstall tdsnn")
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    arch = target_arch().replace(".", "")
    key = f"torch{torch.__version__}-sm{arch}-{digest.hexdigest()[:12]}".replace("+", "_")
    return cache_dir() / "kernels" / key / f"{EXTENSION}.so"


def build_kernels(verbose: bool = False) -> BuildResult:
    """Compile (or find in the cache) and load the ops library; ``KernelBuildError`` if it fails.

    Works without a GPU: with a CUDA build of torch and ``nvcc`` it compiles for
    ``TDSNN_CUDA_ARCH`` (default ``8.0``) and loads the library so the schemas are registered.
    """
    home = cuda_home()
    library = library_path()
    folder = library.parent
    arch = target_arch()
    start = time.perf_counter()
    compiled = not library.exists()
    if compiled:
        folder.mkdir(parents=True, exist_ok=True)
        cpp_extension = _cpp_extension(home)
        previous = os.environ.get("TORCH_CUDA_ARCH_LIST")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
        try:
            cpp_extension.load(
                name=EXTENSION,
                sources=[str(p) for p in source_files()],
                build_directory=str(folder),
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "--expt-relaxed-constexpr"],
                is_python_module=False,
                verbose=verbose,
            )
        except Exception as exc:  # compiler errors arrive as RuntimeError / CalledProcessError
            lines = str(exc).strip().splitlines() or [repr(exc)]
            first_error = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
            raise KernelBuildError(
                f"building the tdsnn kernels in {folder} failed ({first_error.strip()}); "
                "rerun `tdsnn info --build-kernels --verbose` to see the compiler output"
            ) from exc
        finally:
            if previous is None:
                os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = previous
    else:
        try:
            torch.ops.load_library(str(library))
        except OSError as exc:
            raise KernelBuildError(
                f"loading {library} failed ({exc}); delete {folder} to rebuild"
            ) from exc
    return BuildResult(library, arch, time.perf_counter() - start, compiled)
