"""Figures of ``tdsnn analyze`` (matplotlib, PNG), every recording side by side.

Each function takes ``results``: ``{label: [AreaAnalysis, ...]}`` in the order given on the
command line, draws one figure and writes it to ``path``; it returns ``False`` (writing
nothing) when no recording has what the figure needs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import hsv_to_rgb
from matplotlib.figure import Figure  # drawn without pyplot: the global backend is untouched

from tdsnn.analysis.topography import AreaAnalysis
from tdsnn.atomic import write_atomic

__all__ = [
    "correlation_figure",
    "category_figure",
    "orientation_figure",
    "smoothness_figure",
    "synchrony_figure",
]

Results = dict[str, list[AreaAnalysis]]


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    return True


def _areas(results: Results) -> list[str]:
    names: list[str] = []
    for analyses in results.values():
        names += [a.area for a in analyses if a.area not in names]
    return names


def _find(analyses: list[AreaAnalysis], area: str) -> AreaAnalysis | None:
    return next((a for a in analyses if a.area == area), None)


def _curves(results: Results, key: str, path: Path, ylabel: str, title: str) -> bool:
    """One panel per area of the curve ``key``; False (no file) when no analysis has it."""
    areas = _areas(results)
    if not any(key in a.metrics for analyses in results.values() for a in analyses):
        return False
    fig = Figure(figsize=(4 * len(areas), 3.4))
    axes = fig.subplots(1, len(areas), squeeze=False)
    for ax, area in zip(axes[0], areas, strict=True):
        for i, (label, analyses) in enumerate(results.items()):
            found = _find(analyses, area)
            if found is None or key not in found.metrics:
                continue
            curve = found.metrics[key]
            x = np.asarray(curve["bin_centers"])
            colour = f"C{i}"
            ax.plot(x, np.asarray(curve["mean"], float), "o-", color=colour, label=label, ms=3)
            if "low" in curve:
                ax.fill_between(x, curve["low"], curve["high"], color=colour, alpha=0.2, lw=0)
            if "chance" in curve:
                ax.plot(x, curve["chance"], "--", color=colour, lw=1, label=f"{label} (chance)")
        ax.axhline(0, color="0.7", lw=0.8)
        ax.set(title=f"{area}", xlabel="cortical distance (mm)", ylabel=ylabel)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def correlation_figure(results: Results, path: Path) -> bool:
    """Response correlation against cortical distance per area, with chance and 95 % bands."""
    return _curves(
        results, "correlation_vs_distance", path, "response correlation (Pearson r)",
        "Response correlation against cortical distance",
    )  # fmt: skip


def synchrony_figure(results: Results, path: Path) -> bool:
    """r_CCG (lags within ±1 step) against cortical distance per area."""
    return _curves(
        results, "synchrony_vs_distance", path, "synchrony r_CCG",
        "Spike synchrony against cortical distance",
    )  # fmt: skip


def smoothness_figure(results: Results, path: Path) -> bool:
    """Bars: orientation, spatial-frequency and category smoothness per area and recording."""
    kinds = (
        ("orientation_smoothness", "orientation"),
        ("frequency_smoothness", "spatial frequency"),
        ("category_smoothness", "category t"),
    )
    areas = _areas(results)
    present = [
        (key, name)
        for key, name in kinds
        if any(key in a.metrics for analyses in results.values() for a in analyses)
    ]
    if not present:
        return False
    fig = Figure(figsize=(4.5 * len(present), 3.4))
    axes = fig.subplots(1, len(present), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, (key, name) in zip(axes[0], present, strict=True):
        for i, (label, analyses) in enumerate(results.items()):
            values = []
            for area in areas:
                found = _find(analyses, area)
                value = found.metrics.get(key) if found else None
                values.append(np.nan if value is None else value)
            ax.bar(np.arange(len(areas)) + i * width, values, width, label=label, color=f"C{i}")
        ax.set_xticks(np.arange(len(areas)) + width * (len(results) - 1) / 2, areas)
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set(title=f"{name} smoothness", ylabel="smoothness (1 = smooth, 0 = random)")
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def orientation_figure(results: Results, path: Path) -> bool:
    """Orientation preference maps of the first area with gratings: hue = preferred
    orientation, brightness = selectivity; pinwheels marked (white: +½, black: −½)."""
    panels = []
    for label, analyses in results.items():
        found = next((a for a in analyses if "orientation_map" in a.arrays), None)
        if found is not None:
            panels.append((label, found))
    if not panels:
        return False
    fig = Figure(figsize=(4 * len(panels) + 1.2, 4))
    axes = fig.subplots(1, len(panels) + 1, squeeze=False,
                         gridspec_kw={"width_ratios": [4] * len(panels) + [0.35]})  # fmt: skip
    for ax, (label, found) in zip(axes[0], panels, strict=False):
        z = np.nan_to_num(found.arrays["orientation_map"])
        side = found.arrays["pixel_mm"] * z.shape[0]
        hue = (np.angle(z) % (2 * np.pi)) / (2 * np.pi)
        value = np.clip(np.abs(z) / max(np.abs(z).max(), 1e-12), 0, 1)
        rgb = hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], axis=-1))
        ax.imshow(rgb, origin="lower", extent=(0, side, 0, side))
        pins = found.arrays.get("pinwheels")
        if pins is not None and len(pins):
            scale = found.arrays["pixel_mm"]
            for sign, colour in ((1, "white"), (-1, "black")):
                chosen = pins[pins[:, 2] == sign]
                ax.scatter((chosen[:, 1] + 0.5) * scale, (chosen[:, 0] + 0.5) * scale, s=10,
                           c=colour, edgecolors="0.5", linewidths=0.4)  # fmt: skip
        density = found.metrics.get("pinwheels", {}).get("density")
        extra = f", {density:.2f} pinwheels/Λ²" if density is not None else ""
        ax.set(title=f"{label}: {found.area}{extra}", xlabel="sheet x (mm)", ylabel="sheet y (mm)")
    wheel = np.linspace(0, 1, 256)[:, None]
    key = axes[0][-1]
    key.imshow(hsv_to_rgb(np.stack([wheel, np.ones_like(wheel), np.ones_like(wheel)], -1)),
               aspect="auto", origin="lower", extent=(0, 1, 0, 180))  # fmt: skip
    key.set(xticks=[], ylabel="preferred orientation (deg)")
    key.yaxis.set_label_position("right")
    key.yaxis.tick_right()
    fig.suptitle("Orientation preference (hue) and selectivity (brightness)")
    return _save(fig, path)


def category_figure(results: Results, path: Path) -> bool:
    """t-maps of the last area with labelled trials, one row per recording, one column per
    category (up to 6), patch outlines at the expert threshold."""
    rows = []
    for label, analyses in results.items():
        found = next((a for a in reversed(analyses) if "category_t_maps" in a.arrays), None)
        if found is not None:
            rows.append((label, found))
    if not rows:
        return False
    k = min(6, max(r[1].arrays["category_t_maps"].shape[0] for r in rows))
    fig = Figure(figsize=(2.6 * k + 1, 2.6 * len(rows)))
    axes = fig.subplots(len(rows), k, squeeze=False)
    limit = max(np.nanmax(np.abs(r[1].arrays["category_t_maps"][:k])) for r in rows) or 1.0
    image = None
    for (label, found), ax_row in zip(rows, axes, strict=True):
        maps_, masks = found.arrays["category_t_maps"], found.arrays["category_masks"]
        side = found.arrays["category_pixel_mm"] * maps_.shape[1]
        names = found.metrics.get("categories", [])
        for c, ax in enumerate(ax_row):
            if c >= len(maps_):
                ax.axis("off")
                continue
            image = ax.imshow(maps_[c], origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit,
                              extent=(0, side, 0, side))  # fmt: skip
            if masks[c].any():
                ax.contour(masks[c].astype(float), levels=[0.5], colors="k", linewidths=0.8,
                           origin="lower", extent=(0, side, 0, side))  # fmt: skip
            name = names[c] if c < len(names) else str(c)
            ax.set(title=f"{label}: {found.area} {name}", xticks=[], yticks=[])
        ax_row[0].set(ylabel="sheet y (mm)")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="selectivity t (category vs rest)")
    # many panels: a lower resolution keeps the file small
    write_atomic(path, lambda f: fig.savefig(f, dpi=80, format="png"))
    return True
