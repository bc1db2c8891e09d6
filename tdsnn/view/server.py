"""``tdsnn view --serve``: the viewer page from a loopback HTTP server, data read on request.

Standard library only (:mod:`http.server`), bound to 127.0.0.1, one request at a time (h5py
files are not shared between threads). Routes, every other path a 404; no route opens a file:
the server reads only the recordings it was started with, through :mod:`tdsnn.record`::

    GET /                                     the page (no data inside)
    GET /api/manifest                         JSON: recordings, areas, trial tables
    GET /api/blob/<rec>/<area>/<map>          float32 map (x, y, rate, orientation, ...)
    GET /api/trial/<rec>/<area>/<k>           uint8 spike bits of trial k [T, ceil(N/8)]
    GET /api/unit/<rec>/<area>/<u>            JSON: responses per trial and raster of unit u
    GET /api/region/<rec>/<area>/<x0>,<y0>,<x1>,<y1>   JSON: mean response per trial (mm box)
"""

from __future__ import annotations

import errno
import json
import re
import socket
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np

from tdsnn.errors import ConfigError, UserError
from tdsnn.record import Recording
from tdsnn.view import data
from tdsnn.view.page import page_html

__all__ = ["HOST", "ViewServer", "free_port", "make_server"]

HOST = "127.0.0.1"
_NUMBER = r"-?[0-9]+(?:\.[0-9]*)?(?:e-?[0-9]+)?"
ROUTES = (
    ("page", re.compile(r"/")),
    ("manifest", re.compile(r"/api/manifest")),
    ("blob", re.compile(r"/api/blob/([0-9]+)/([A-Za-z0-9_]+)/([a-z]+)")),
    ("trial", re.compile(r"/api/trial/([0-9]+)/([A-Za-z0-9_]+)/([0-9]+)")),
    ("unit", re.compile(r"/api/unit/([0-9]+)/([A-Za-z0-9_]+)/([0-9]+)")),
    ("region", re.compile(rf"/api/region/([0-9]+)/([A-Za-z0-9_]+)/((?:{_NUMBER},){{3}}{_NUMBER})")),
)


class NotFound(Exception):
    """The request names nothing the server holds."""


class ViewServer(HTTPServer):
    """The loopback server of a set of open recordings."""

    def __init__(self, port: int, recordings: list[Recording], labels: list[str]) -> None:
        self.recordings = recordings
        entries = []
        for rec, label in zip(recordings, labels, strict=True):
            entry = data.manifest_entry(rec, label)
            for area in entry["areas"]:
                area["blobs"] = data.map_keys(rec)
            entries.append(entry)
        self.manifest = {"recordings": entries}
        self.page = page_html(self.manifest, None).encode("utf-8")
        super().__init__((HOST, port), Handler)

    @lru_cache(maxsize=64)  # noqa: B019 - the server lives as long as its cache
    def maps(self, r: int, area: str) -> dict[str, np.ndarray]:
        return data.area_maps(self._rec(r, area), area)

    def _rec(self, r: int, area: str) -> Recording:
        if r >= len(self.recordings) or area not in self.recordings[r].areas:
            raise NotFound
        return self.recordings[r]

    def answer(self, path: str) -> tuple[str, bytes]:
        """``(content type, body)`` for a GET of ``path``; :class:`NotFound` outside the routes."""
        for name, pattern in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                return getattr(self, f"_{name}")(*match.groups())
        raise NotFound

    def _page(self) -> tuple[str, bytes]:
        return "text/html; charset=utf-8", self.page

    def _manifest(self) -> tuple[str, bytes]:
        return "application/json", json.dumps(self.manifest).encode()

    def _blob(self, r: str, area: str, key: str) -> tuple[str, bytes]:
        arrays = self.maps(int(r), area)
        if key not in arrays:
            raise NotFound
        return "application/octet-stream", arrays[key].astype("<f4").tobytes()

    def _trial(self, r: str, area: str, k: str) -> tuple[str, bytes]:
        rec = self._rec(int(r), area)
        if rec.rates or int(k) >= rec.num_trials:
            raise NotFound
        return "application/octet-stream", data.trial_bits(rec, area, int(k)).tobytes()

    def _unit(self, r: str, area: str, u: str) -> tuple[str, bytes]:
        rec = self._rec(int(r), area)
        if int(u) >= rec.area(area).num_units:
            raise NotFound
        return "application/json", json.dumps(data.unit_activity(rec, area, int(u))).encode()

    def _region(self, r: str, area: str, box: str) -> tuple[str, bytes]:
        rec = self._rec(int(r), area)
        box_mm = tuple(float(v) for v in box.split(","))
        return "application/json", json.dumps(data.region_responses(rec, area, box_mm)).encode()


class Handler(BaseHTTPRequestHandler):
    """GET only; the path (without query) must match a route exactly."""

    server: ViewServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        try:
            kind, body = self.server.answer(path)
        except NotFound:
            self.send_error(404, "not found")
            return
        except UserError as exc:
            self.send_error(400, str(exc).splitlines()[0])
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's name
        """Quiet: the page makes a request per click."""


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_server(port: int, recordings: list[Recording], labels: list[str]) -> ViewServer:
    """The server on ``127.0.0.1:port`` (0: any free port); a port in use is a one-line error
    that suggests a free one."""
    try:
        return ViewServer(port, recordings, labels)
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
            raise
        why = "in use" if exc.errno == errno.EADDRINUSE else "not allowed"
        raise ConfigError(
            f"port {port} on {HOST} is {why}; try --port {free_port()} (free now)"
        ) from exc
