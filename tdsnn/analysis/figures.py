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
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from tdsnn.analysis.topography import AreaAnalysis
from tdsnn.atomic import write_atomic

__all__ = [
    "correlation_figure",
    "category_figure",
    "orientation_figure",
    "pinwheel_curve_figure",
    "smoothness_figure",
    "synchrony_figure",
    "tuning_figure",
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
    """The loss's r_CCG (raw trains, lag weights 1/(B·(T−|τ|)), |τ| ≤ W) against cortical
    distance per area."""
    return _curves(
        results, "synchrony_vs_distance", path, "r_CCG as trained (raw trains, |τ| ≤ W)",
        "Spike synchrony (the loss's r_CCG) against cortical distance",
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


def _orientation_rgb(z: np.ndarray, top: float = 100.0) -> np.ndarray:
    """Hue = preferred orientation (arg z / 2), brightness = |z| over its ``top`` percentile
    (clipped at 1): ``[..., 3]``."""
    z = np.nan_to_num(z)
    hue = (np.angle(z) % (2 * np.pi)) / (2 * np.pi)
    value = np.clip(np.abs(z) / max(np.percentile(np.abs(z), top), 1e-12), 0, 1)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], axis=-1))


def _units_panel(ax, found: AreaAnalysis, label: str) -> None:
    """Every unit at its own sheet position, coloured by its preference and selectivity (full
    brightness from the 99th percentile of selectivity up), on black."""
    pos = found.arrays["map_positions"]
    pref, sel = found.arrays["preferred_orientation"], found.arrays["selectivity"]
    z = np.where(np.isfinite(pref), sel * np.exp(2j * np.deg2rad(pref)), 0)
    side = found.arrays["side_mm"]
    size = max(0.2, 6e4 / max(len(pos), 1))  # marker area (pt²): the sheet about covered
    ax.set_facecolor("black")
    ax.scatter(pos[:, 0], pos[:, 1], c=_orientation_rgb(z, 99.0), s=size, marker="s",
               linewidths=0)  # fmt: skip
    ax.set(xlim=(0, side), ylim=(0, side), aspect="equal", xlabel="sheet x (mm)",
           ylabel="sheet y (mm)", title=f"{label}: {found.area}, {len(pos)} units")  # fmt: skip


def _smoothed_panel(ax, found: AreaAnalysis, label: str) -> None:
    """The smoothed map the pinwheels are counted on, pinwheels marked (white +½, black −½)."""
    z = found.arrays["orientation_map"]
    scale = found.arrays["pixel_mm"]
    side = scale * z.shape[0]
    ax.imshow(_orientation_rgb(z), origin="lower", extent=(0, side, 0, side))
    pins = found.arrays.get("pinwheels")
    if pins is not None and len(pins):
        for sign, colour in ((1, "white"), (-1, "black")):
            chosen = pins[pins[:, 2] == sign]
            ax.scatter((chosen[:, 1] + 0.5) * scale, (chosen[:, 0] + 0.5) * scale, s=8,
                       c=colour, edgecolors="0.5", linewidths=0.4)  # fmt: skip
    density = found.metrics.get("pinwheels", {}).get("density")
    extra = f", {density:.2f} pinwheels/Λ²" if density is not None else ""
    sigma = found.metrics["map_smoothing_mm"]
    ax.set(title=f"{label}: {found.area}, σ = {sigma:.2f} mm{extra}", xlabel="sheet x (mm)")


def orientation_figure(results: Results, path: Path) -> bool:
    """Orientation preference maps of every area with gratings, one row per recording and
    area: each unit at its own position (left), and the map smoothed with the stated kernel
    with its pinwheels (right). Hue = preferred orientation, brightness = selectivity."""
    rows = [(label, a) for label, analyses in results.items() for a in analyses
            if "orientation_map" in a.arrays]  # fmt: skip
    if not rows:
        return False
    fig = Figure(figsize=(9.2, 4.2 * len(rows)))
    axes = fig.subplots(len(rows), 3, squeeze=False, gridspec_kw={"width_ratios": [4, 4, 0.3]})
    for (label, found), (left, right, key) in zip(rows, axes, strict=True):
        _units_panel(left, found, label)
        _smoothed_panel(right, found, label)
        wheel = np.linspace(0, 1, 256)[:, None]
        key.imshow(hsv_to_rgb(np.stack([wheel, np.ones_like(wheel), np.ones_like(wheel)], -1)),
                   aspect="auto", origin="lower", extent=(0, 1, 0, 180))  # fmt: skip
        key.set(xticks=[], ylabel="preferred orientation (deg)")
        key.yaxis.set_label_position("right")
        key.yaxis.tick_right()
    fig.suptitle("Orientation preference (hue) and selectivity (brightness)")
    return _save(fig, path)


def tuning_figure(results: Results, path: Path) -> bool:
    """Per area with gratings: histogram of preferred orientations (top; population vector
    length in the title) and mean selectivity per spatial frequency (bottom; hollow markers:
    frequencies below one cycle per receptive field or above Nyquist)."""
    areas = [a for a in _areas(results) if any(
        "orientation_histogram" in (_find(r, a).metrics if _find(r, a) else {})
        for r in results.values())]  # fmt: skip
    if not areas:
        return False
    fig = Figure(figsize=(max(4 * len(areas), 6), 6.4))
    axes = fig.subplots(2, len(areas), squeeze=False)
    width = 1.0 / max(len(results), 1)
    for col, area in enumerate(areas):
        top, bottom = axes[0][col], axes[1][col]
        lengths = []
        for i, (label, analyses) in enumerate(results.items()):
            found = _find(analyses, area)
            if found is None or "orientation_histogram" not in found.metrics:
                continue
            hist = found.metrics["orientation_histogram"]
            edges, counts = np.asarray(hist["edges_deg"]), np.asarray(hist["counts"], float)
            step = edges[1] - edges[0]
            share = counts / max(counts.sum(), 1)
            top.bar(edges[:-1] + step * (i * width + width / 2), share, step * width,
                    color=f"C{i}", label=label)  # fmt: skip
            lengths.append(f"{found.metrics['population_vector_length']:.2f}")
            rows = found.metrics["selectivity_per_frequency"]
            f = np.array([r["cycles_per_image"] for r in rows])
            sel = np.array([np.nan if r["selectivity_mean"] is None else r["selectivity_mean"]
                            for r in rows])  # fmt: skip
            ok = np.array([r["resolvable"] for r in rows])
            bottom.plot(f, sel, "-", color=f"C{i}", lw=1)
            bottom.plot(f[ok], sel[ok], "o", color=f"C{i}", ms=4, label=label)
            bottom.plot(f[~ok], sel[~ok], "o", mfc="none", color=f"C{i}", ms=4)
        top.set(title=f"{area}: PVL {', '.join(lengths)}", xlabel="preferred orientation (deg)",
                ylabel="fraction of units", xlim=(0, 180))  # fmt: skip
        bottom.set_xscale("log", base=2)
        bottom.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        bottom.xaxis.set_minor_formatter(NullFormatter())
        bottom.set(xlabel="spatial frequency (cycles per image)",
                   ylabel="mean selectivity (1 − circ. var.)", ylim=(0, None),
                   title="hollow: below 1 cycle per RF")  # fmt: skip
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Preferences at the best frequency; selectivity per frequency", fontsize=10)
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


def pinwheel_curve_figure(results: Results, path: Path) -> bool:
    """Pinwheels per Λ² against the map's smoothing kernel, one panel per recording and area
    with pinwheels: the map's curve and each null's mean with its central 95 % band."""
    panels = [(label, a) for label, analyses in results.items() for a in analyses
              if "pinwheel_curve" in a.metrics]  # fmt: skip
    if not panels:
        return False
    fig = Figure(figsize=(4 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (label, analysis) in zip(axes[0], panels, strict=True):
        curve = analysis.metrics["pinwheel_curve"]
        x = np.asarray(curve["kernel_hypercolumns"], float)
        for i, kind in enumerate(k for k in curve if isinstance(curve[k], dict)):
            band = {key: np.asarray(curve[kind][key], float) for key in ("mean", "low", "high")}
            ax.fill_between(x, band["low"], band["high"], color=f"C{i + 1}", alpha=0.2, lw=0)
            ax.plot(x, band["mean"], "--", color=f"C{i + 1}", lw=1, label=f"null: {kind}")
        ax.plot(x, np.asarray(curve["map"], float), "o-", color="C0", ms=3, label="map")
        ax.axhline(np.pi, color="0.6", lw=0.8, ls=":", label="π")
        ax.set(title=f"{label}, {analysis.area}", xlabel="map kernel σ (hypercolumns)",
               ylabel="pinwheels per Λ²")  # fmt: skip
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Pinwheel density against the smoothing kernel, with the nulls' 95 % bands")
    return _save(fig, path)
