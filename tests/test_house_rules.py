"""House rules checked from outside: no import-time side effects, one-line errors for faults
the user can fix, causes kept under ``TDSNN_DEBUG=1``, and a quick ``--help``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


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
