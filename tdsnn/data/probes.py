"""Probe stimuli for recordings and topography analysis (DESIGN sections 10 and 11).

A :class:`ProbeSet` is a table of stimuli, one row per stimulus (its parameters as columns),
plus a renderer that makes the images of any rows on demand, so that a recording never holds
more than one batch of images. Every probe set is deterministic.

- :func:`grating_probes`: full-field sine gratings over orientation x spatial frequency x phase
  (TDANN's probe set): grey-scale on every colour channel, values in [0, 1], mean 0.5.
- :func:`category_probes`: a class-balanced sample of a dataset's test split (for ``shapes``,
  the built-in procedural classes).
- :func:`dataset_probes`: a dataset's whole test split, in order.
- :func:`natural_probes`: scikit-image's bundled face / non-face images (``lfw_subset``), when
  scikit-image is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..choices import PROBE_KINDS
from ..errors import ConfigError, UserError, import_optional

__all__ = [
    "PROBE_KINDS",
    "ProbeSet",
    "category_probes",
    "dataset_probes",
    "default_frequencies",
    "grating_probes",
    "natural_probes",
    "render_gratings",
    "resolvable_frequencies",
]

# Columns of every probe set; those that do not apply to a kind are NaN (floats) or -1 (label).
PARAM_COLUMNS = ("label", "orientation_deg", "cycles_per_image", "phase_deg")


@dataclass(frozen=True)
class ProbeSet:
    """A table of ``len(self)`` stimuli and a renderer of their images.

    Attributes:
        kind: one of :data:`PROBE_KINDS`.
        params: column name -> ``[N]`` array: ``label`` (int64 class index, -1 for none),
            ``orientation_deg`` (0 <= theta < 180, direction of the stripes' normal),
            ``cycles_per_image`` and ``phase_deg`` (float64, NaN for non-gratings).
        class_names: names of the labels (empty for gratings).
        render: ``indices [n] int64 -> images float32 [n, C, S, S]`` in [0, 1].
    """

    kind: str
    params: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    render: Callable[[np.ndarray], Tensor]

    def __len__(self) -> int:
        return len(self.params["label"])

    def batches(self, batch_size: int, start: int = 0):
        """``(indices [n], images [n, C, S, S])`` for stimuli ``start ..`` in order."""
        for lo in range(start, len(self), batch_size):
            indices = np.arange(lo, min(lo + batch_size, len(self)))
            yield indices, self.render(indices)


def _params(n: int, **columns) -> dict[str, np.ndarray]:
    out = {
        "label": np.full(n, -1, dtype=np.int64),
        **{key: np.full(n, np.nan) for key in PARAM_COLUMNS[1:]},
    }
    for key, value in columns.items():
        out[key] = np.asarray(value, dtype=out[key].dtype)
    return out


# --------------------------------------------------------------------------- gratings


def default_frequencies(image_size: int, count: int = 8) -> tuple[float, ...]:
    """``count`` spatial frequencies (cycles per image) log-spaced from 1 cycle per image to
    ``image_size / 4`` (4 pixels per cycle): the probe set when the architecture is unknown;
    :func:`resolvable_frequencies` spans what a stack's receptive fields resolve."""
    top = max(image_size / 4.0, 1.0)
    return tuple(float(f) for f in np.geomspace(1.0, top, count))


MIN_PERIOD_PX = 3.0
"""Finest grating period (px) of :func:`resolvable_frequencies`. At 2 px per cycle (Nyquist) an
axis-aligned grating's sampled contrast depends on its phase (its pixel RMS ranges from 0 to
1.41 times the continuous grating's), and a grating near 2 px samples as a checkerboard times a
slower grating at another orientation, which a 3×3 filter cannot tell apart; at 3 px every
orientation and phase keeps its pixel RMS within 1 % of the continuous grating's."""


def resolvable_frequencies(
    image_size: int,
    receptive_field_px: float | Iterable[float],
    *,
    min_period_px: float = MIN_PERIOD_PX,
    steps_per_octave: int = 4,
) -> tuple[float, ...]:
    """Spatial frequencies (cycles per image) from one cycle per receptive field to one cycle
    per ``min_period_px`` pixels, log-spaced, ``steps_per_octave`` per octave, both ends
    included.

    ``receptive_field_px``: one receptive field side (px) or several (e.g. every area of a
    stack); the largest sets the lowest frequency, and a field wider than the image counts as
    the image (one cycle per image). Every area of a stack finds the frequencies its own
    receptive field resolves among these.
    """
    many = isinstance(receptive_field_px, Iterable)
    fields = np.asarray(list(receptive_field_px) if many else [receptive_field_px], np.float64)
    if fields.size == 0 or not (fields > 0).all():
        raise ConfigError(f"receptive fields must be positive pixel sizes, got {fields.tolist()}")
    if not (min_period_px >= 2 and steps_per_octave >= 1):
        raise ConfigError(
            f"min_period_px must be >= 2 (Nyquist) and steps_per_octave >= 1, got "
            f"{min_period_px} and {steps_per_octave}"
        )
    low = image_size / min(float(fields.max()), float(image_size))
    high = image_size / min_period_px
    if low >= high:
        return (float(high),)
    count = int(math.ceil(math.log2(high / low) * steps_per_octave - 1e-9)) + 1
    return tuple(float(f) for f in np.geomspace(low, high, max(count, 2)))


def render_gratings(
    orientation_deg: Tensor,
    cycles_per_image: Tensor,
    phase_deg: Tensor,
    image_size: int,
    *,
    channels: int = 3,
    contrast: float = 1.0,
) -> Tensor:
    """Sine gratings ``0.5 + 0.5·contrast·sin(2π f (x cos θ + y sin θ) + φ)``, ``[n, C, S, S]``.

    ``x, y`` are pixel centres in image widths (0..1), ``f`` in cycles per image; the three
    parameter tensors are ``[n]``.
    """
    theta = torch.deg2rad(torch.as_tensor(orientation_deg, dtype=torch.float32))
    freq = torch.as_tensor(cycles_per_image, dtype=torch.float32)
    phase = torch.deg2rad(torch.as_tensor(phase_deg, dtype=torch.float32))
    coords = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size  # [S]
    y, x = torch.meshgrid(coords, coords, indexing="ij")  # [S, S]
    along = x * theta.cos()[:, None, None] + y * theta.sin()[:, None, None]  # [n, S, S]
    wave = torch.sin(2 * math.pi * freq[:, None, None] * along + phase[:, None, None])
    images = 0.5 + 0.5 * contrast * wave
    return images.unsqueeze(1).expand(-1, channels, -1, -1).contiguous()


def grating_probes(
    image_size: int,
    *,
    channels: int = 3,
    orientations: int = 8,
    cycles_per_image: tuple[float, ...] | None = None,
    phases: int = 4,
    contrast: float = 1.0,
) -> ProbeSet:
    """Every combination of ``orientations`` (evenly over 180°) x frequencies x ``phases``
    (evenly over 360°), orientation slowest; frequencies default to
    :func:`default_frequencies` (8 of them; ``tdsnn record`` passes
    :func:`resolvable_frequencies` of the run's receptive fields)."""
    for name, value in (("orientations", orientations), ("phases", phases)):
        if value < 1:
            raise ConfigError(f"grating {name} must be >= 1, got {value}")
    freqs = default_frequencies(image_size) if cycles_per_image is None else cycles_per_image
    theta = np.arange(orientations) * (180.0 / orientations)
    phase = np.arange(phases) * (360.0 / phases)
    grid = np.meshgrid(theta, np.asarray(freqs, dtype=np.float64), phase, indexing="ij")
    theta, freq, phase = (g.reshape(-1) for g in grid)
    params = _params(len(theta), orientation_deg=theta, cycles_per_image=freq, phase_deg=phase)

    def render(indices: np.ndarray) -> Tensor:
        return render_gratings(
            torch.from_numpy(theta[indices]),
            torch.from_numpy(freq[indices]),
            torch.from_numpy(phase[indices]),
            image_size,
            channels=channels,
            contrast=contrast,
        )

    return ProbeSet("gratings", params, (), render)


# --------------------------------------------------------------------------- dataset images


def _dataset_renderer(dataset: Dataset, rows: np.ndarray, channels: int) -> Callable:
    """Render probe rows as the images ``dataset[rows[i]]`` (float32 [C, S, S])."""

    def render(indices: np.ndarray) -> Tensor:
        picked = [int(rows[i]) for i in indices]
        images = torch.stack([torch.as_tensor(dataset[i][0]) for i in picked]).float()
        if images.shape[1] != channels:
            images = images[:, :1].expand(-1, channels, -1, -1).contiguous()
        return images

    return render


def _labels_of(dataset: Dataset) -> np.ndarray:
    """Every label of ``dataset`` (from its label tensor when it keeps one in memory)."""
    from torch.utils.data import Subset

    indices = None
    base = dataset
    if isinstance(base, Subset):
        indices, base = np.asarray(base.indices), base.dataset
    labels = getattr(base, "labels", None)
    if labels is None:
        labels = getattr(base, "targets", None)
    if labels is None:
        return np.asarray([int(dataset[i][1]) for i in range(len(dataset))], dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    return labels if indices is None else labels[indices]


def category_probes(
    test_set: Dataset, class_names: tuple[str, ...], *, per_class: int = 16, channels: int = 3
) -> ProbeSet:
    """The first ``per_class`` test images of every class (fewer where a class has fewer),
    grouped by class in label order."""
    if per_class < 1:
        raise ConfigError(f"images per class must be >= 1, got {per_class}")
    labels = _labels_of(test_set)
    rows = np.concatenate(
        [np.flatnonzero(labels == k)[:per_class] for k in range(len(class_names))]
    )
    if len(rows) == 0:
        raise UserError("the test split holds no images to use as category probes")
    params = _params(len(rows), label=labels[rows])
    return ProbeSet(
        "categories", params, tuple(class_names), _dataset_renderer(test_set, rows, channels)
    )


def dataset_probes(
    test_set: Dataset, class_names: tuple[str, ...], *, limit: int | None = None, channels: int = 3
) -> ProbeSet:
    """The test split in order (its first ``limit`` images)."""
    labels = _labels_of(test_set)
    rows = np.arange(len(labels) if limit is None else min(limit, len(labels)))
    params = _params(len(rows), label=labels[rows])
    return ProbeSet(
        "dataset", params, tuple(class_names), _dataset_renderer(test_set, rows, channels)
    )


# --------------------------------------------------------------------------- natural images


def natural_probes(image_size: int, *, channels: int = 3) -> ProbeSet:
    """scikit-image's ``lfw_subset``: 100 faces then 100 non-faces (25 x 25 grey), resized
    to ``image_size``; labels 0 = face, 1 = non-face. Needs scikit-image."""
    skdata = import_optional("skimage.data", "probes", "the natural probes")
    faces = torch.from_numpy(np.asarray(skdata.lfw_subset(), dtype=np.float32))  # [200, 25, 25]
    images = F.interpolate(
        faces[:, None], size=(image_size, image_size), mode="bilinear", antialias=True
    ).clamp_(0, 1)
    images = images.expand(-1, channels, -1, -1).contiguous()
    labels = np.repeat(np.arange(2, dtype=np.int64), len(faces) // 2)
    return ProbeSet(
        "natural",
        _params(len(labels), label=labels),
        ("face", "non-face"),
        lambda indices: images[torch.from_numpy(np.asarray(indices))],
    )
