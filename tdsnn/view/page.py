"""The viewer page: one HTML file with the viewer's script, style and (offline) data inlined.

Front end (DESIGN §3 ``view/``): vanilla JavaScript on 2-D canvases, no library. Each area's
units are drawn once into an offscreen image (one pixel per unit, about three pixels per unit
spacing), and pan and zoom redraw that image under a transform, so a frame costs the same for
100 k units as for 100. Chosen by measurement in headless Chromium on a 2-core CPU machine
(docs/analysis.md, "Viewing maps"): Plotly 7.1 with its script inlined, 102 400 points and
nothing else, is a 7.9 MB page that first renders in 3.6 s (WebGL ``scattergl``) and takes
0.56 s per zoom step, 9.3 s and 5.2 s as SVG; this page, with spikes and every map, takes
0.34 s and 0.45 ms.

Data travel as base64 little-endian typed arrays (float32 maps, packed spike bits: see
:mod:`tdsnn.view.data`), decoded on first use. The page works from disk: nothing is fetched,
and its Content-Security-Policy forbids any connection. Served (``--serve``) pages get the same
script with no data inside; it asks the loopback server for each piece as it needs it.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from pathlib import Path

import numpy as np

from tdsnn.errors import ConfigError
from tdsnn.record import Recording
from tdsnn.view import data

__all__ = ["EMBED_LIMIT_MB", "area_blobs", "labels_for", "page_html", "write_page"]

EMBED_LIMIT_MB = 256  # bigger pages are refused with a pointer to --serve
CSP = {
    "offline": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:",
    "serve": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data: blob:; connect-src 'self'",
}


def labels_for(paths: list[Path], labels: str | None) -> list[str]:
    """``--labels a,b`` split, one per recording; by default the file stems (paths if the stems
    repeat)."""
    if labels:
        names = [s.strip() for s in labels.split(",")]
        if len(names) != len(paths):
            raise ConfigError(
                f"--labels names {len(names)} recordings, {len(paths)} were given; give one "
                "comma-separated label per recording"
            )
        return names
    stems = [p.stem for p in paths]
    return stems if len(set(stems)) == len(stems) else [str(p) for p in paths]


def area_blobs(rec: Recording, area: str) -> dict[str, np.ndarray]:
    """Everything the offline page embeds for one area: the maps, and the spike bits (or the
    per-trial activations ``float32 [trials·N]`` of ReLU units, as ``counts``)."""
    blobs = data.area_maps(rec, area)
    if rec.rates:
        blobs["counts"] = rec.counts(area).astype(np.float32).reshape(-1)
    else:
        blobs["bits"] = data.spike_bits(rec, area).reshape(-1)
    return blobs


def _asset(name: str) -> str:
    return resources.files("tdsnn.view").joinpath(name).read_text(encoding="utf-8")


def page_html(manifest: dict, blobs: dict[str, str] | None) -> str:
    """The page for ``manifest`` (``{"recordings": [...]}``); ``blobs`` maps names
    ``"<rec>/<area>/<key>"`` to base64 (offline page), or ``None`` for a served page."""
    mode = "offline" if blobs is not None else "serve"
    payload = json.dumps({"mode": mode, "manifest": manifest, "blobs": blobs or {}})
    payload = payload.replace("</", "<\\/")  # a label holding "</script>" stays data
    return (
        _asset("template.html")
        .replace("{{CSP}}", CSP[mode])
        .replace("{{CSS}}", _asset("viewer.css"))
        .replace("{{JS}}", _asset("viewer.js"))
        .replace("{{DATA}}", payload)
    )


def _b64(array: np.ndarray) -> str:
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return base64.b64encode(little.tobytes()).decode("ascii")


def write_page(recordings: list[Recording], labels: list[str], out: Path) -> int:
    """Write the offline page of ``recordings`` to ``out``; returns its size in bytes."""
    blobs, entries = {}, []
    for r, (rec, label) in enumerate(zip(recordings, labels, strict=True)):
        entry = data.manifest_entry(rec, label)
        for area in entry["areas"]:
            arrays = area_blobs(rec, area["name"])
            area["blobs"] = sorted(arrays)
            blobs.update({f"{r}/{area['name']}/{k}": _b64(v) for k, v in arrays.items()})
        entries.append(entry)
    size = sum(len(v) for v in blobs.values())
    if size > EMBED_LIMIT_MB * 2**20:
        raise ConfigError(
            f"the recordings need {size / 2**20:.0f} MB inside the page, more than "
            f"{EMBED_LIMIT_MB} MB; view them with --serve instead of --out"
        )
    html = page_html({"recordings": entries}, blobs)
    tmp = out.with_name(out.name + ".part")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out.stat().st_size
