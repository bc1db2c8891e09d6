"""Built-in procedural dataset ``shapes``: coloured 2-D shapes with nuisance variation.

Each image shows one shape of one of :data:`SHAPE_CLASSES` on a coloured, gently shaded
background. The class is the shape; everything else is nuisance that defeats a linear template
on raw pixels but not a small conv net:

- position (centre anywhere that keeps the shape mostly inside the frame), scale (outer radius
  21-32 % of the image side), in-plane rotation, a mild stretch (axis ratio up to 1.35);
- colour: random background and foreground colours with a random contrast *polarity*
  (foreground lighter or darker than the background; grey-level contrast 0.35-0.65 before a
  per-channel tint of up to 0.15);
- a random linear shading gradient over the background, 0-3 tiny distractor dots, and
  additive Gaussian pixel noise (sigma 0.01-0.05).

Images are rendered with signed-distance functions on a pixel-centre grid (anti-aliased edges),
vectorised with torch over chunks of images, and kept in memory as ``uint8 [N, 3, H, W]``.
Items are ``(image: float32 [3, H, W] in [0, 1], label: int)``: pixel intensities, not
mean/std normalised (the same convention as every dataset of :mod:`tdsnn.data`).

Determinism: image ``i`` of a split depends only on ``(seed, split, i, image_size)`` (for a
given torch version: the parameters come from torch's CPU generator). Indices
are grouped in chunks of :data:`CHUNK` images; every chunk draws its parameters from its own
``torch.Generator`` seeded from ``numpy.random.SeedSequence([seed, split_id, chunk])``, so the
train and test splits come from disjoint seed streams and a longer split extends a shorter one.
Labels are ``i % num_classes``: classes are balanced exactly when N is a multiple of the number
of classes.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .memory import TensorImageDataset

SHAPE_CLASSES: tuple[str, ...] = (
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "star",
    "bar-pair",
    "checker",
    "crescent",
    "ell",
)
"""Class names of the ``shapes`` dataset; the label is the index into this tuple."""

SPLITS = ("train", "test")
DEFAULT_SIZES = {"train": 20_000, "test": 2_000}
CHUNK = 1000
"""Images per independently seeded chunk (fixes which generator an index is drawn from)."""

_SPLIT_IDS = {"train": 0, "test": 1}


# --------------------------------------------------------------------------------------------
# Signed distance functions. Arguments are local shape coordinates x, y: [n, H, W]; the shape
# fits roughly inside the unit disc. Negative inside, positive outside (units of local length).
# --------------------------------------------------------------------------------------------


def _box(x: Tensor, y: Tensor, hx: float, hy: float, cx: float = 0.0, cy: float = 0.0) -> Tensor:
    """Axis-aligned box with half-sizes (hx, hy) centred at (cx, cy)."""
    dx = (x - cx).abs() - hx
    dy = (y - cy).abs() - hy
    outside = torch.sqrt(dx.clamp(min=0) ** 2 + dy.clamp(min=0) ** 2)
    inside = torch.maximum(dx, dy).clamp(max=0)
    return outside + inside


def _circle(x: Tensor, y: Tensor, r: float, cx: float = 0.0, cy: float = 0.0) -> Tensor:
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _sdf_disc(x: Tensor, y: Tensor) -> Tensor:
    return _circle(x, y, 0.9)


def _sdf_ring(x: Tensor, y: Tensor) -> Tensor:
    return (torch.sqrt(x * x + y * y) - 0.72).abs() - 0.24


def _sdf_square(x: Tensor, y: Tensor) -> Tensor:
    return _box(x, y, 0.75, 0.75)


def _sdf_triangle(x: Tensor, y: Tensor) -> Tensor:
    # Equilateral, circumradius 1, inradius 0.5, centroid at the origin: max of 3 half-planes.
    d = None
    for k in range(3):
        a = math.pi / 2 + k * 2 * math.pi / 3
        h = -(x * math.cos(a) + y * math.sin(a))
        d = h if d is None else torch.maximum(d, h)
    return d - 0.5


def _sdf_cross(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 0.95, 0.24), _box(x, y, 0.24, 0.95))


def _sdf_star(x: Tensor, y: Tensor) -> Tensor:
    # Five-pointed star, outer radius 1, inner radius 0.45. Fold the angle into one half-sector
    # [0, pi/5] and take the signed distance to the edge from the tip A to the inner corner B.
    sector = 2 * math.pi / 5
    r = torch.sqrt(x * x + y * y)
    phi = torch.atan2(y, x) + math.pi / 2  # a tip points up
    a = (torch.remainder(phi, sector) - sector / 2).abs()  # 0 at a tip, pi/5 at an inner corner
    qx, qy = r * torch.cos(a), r * torch.sin(a)
    ax, ay = 1.0, 0.0
    bx, by = 0.45 * math.cos(sector / 2), 0.45 * math.sin(sector / 2)
    ex, ey = bx - ax, by - ay
    norm = math.hypot(ex, ey)
    # cross(e, q - A) > 0 when q is on the origin's side of the edge (inside).
    return -(ex * (qy - ay) - ey * (qx - ax)) / norm


def _sdf_bar_pair(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 0.9, 0.2, cy=0.48), _box(x, y, 0.9, 0.2, cy=-0.48))


def _sdf_checker(x: Tensor, y: Tensor) -> Tensor:
    # 2x2 checker patch: two squares touching at one corner, on a diagonal.
    return torch.minimum(_box(x, y, 0.42, 0.42, 0.42, 0.42), _box(x, y, 0.42, 0.42, -0.42, -0.42))


def _sdf_crescent(x: Tensor, y: Tensor) -> Tensor:
    return torch.maximum(_circle(x, y, 0.9), -_circle(x, y, 0.78, cx=0.48))


def _sdf_ell(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_box(x, y, 0.22, 0.9, cx=-0.5), _box(x, y, 0.72, 0.22, cx=0.0, cy=-0.68))


_SDFS = (
    _sdf_disc,
    _sdf_ring,
    _sdf_square,
    _sdf_triangle,
    _sdf_cross,
    _sdf_star,
    _sdf_bar_pair,
    _sdf_checker,
    _sdf_crescent,
    _sdf_ell,
)
assert len(_SDFS) == len(SHAPE_CLASSES)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _chunk_generator(seed: int, split: str, chunk: int) -> torch.Generator:
    words = np.random.SeedSequence([int(seed), _SPLIT_IDS[split], int(chunk)]).generate_state(2)
    state = (int(words[0]) << 32 | int(words[1])) & ((1 << 63) - 1)
    return torch.Generator().manual_seed(state)


def _sample_params(gen: torch.Generator, n: int) -> dict[str, Tensor]:
    """Draw the nuisance parameters of ``n`` images, always in the same order.

    Returns a dict of float32 tensors; scalars per image are ``[n]``, colours ``[n, 3]``,
    distractor dots ``[n, 3, ...]`` (three dot slots, each on or off).
    """

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    p: dict[str, Tensor] = {}
    p["scale"] = u(n, lo=0.42, hi=0.64)  # shape radius, in units of the image half-side
    p["centre"] = u(n, 2, lo=-1.0, hi=1.0) * (0.92 - p["scale"])[:, None]
    p["angle"] = u(n, lo=0.0, hi=2 * math.pi)
    p["log_aspect"] = u(n, lo=-0.15, hi=0.15)
    # Colours: grey levels with a minimum luminance contrast and random polarity, then tints.
    bg_grey = u(n, lo=0.1, hi=0.9)
    contrast = u(n, lo=0.35, hi=0.65)
    sign = torch.where(u(n) < 0.5, -1.0, 1.0)
    fg_grey = bg_grey + sign * contrast
    flip = (fg_grey < 0.0) | (fg_grey > 1.0)
    fg_grey = torch.where(flip, bg_grey - sign * contrast, fg_grey).clamp(0.0, 1.0)
    p["bg"] = (bg_grey[:, None] + u(n, 3, lo=-0.15, hi=0.15)).clamp(0.0, 1.0)
    p["fg"] = (fg_grey[:, None] + u(n, 3, lo=-0.15, hi=0.15)).clamp(0.0, 1.0)
    p["shading"] = u(n, 2, lo=-0.12, hi=0.12)  # background gradient per unit of x and y
    # Distractor dots: up to 3, radius 0.05-0.1 of the half-side, random colour.
    p["dot_on"] = (u(n, 3) < 0.25).float()
    p["dot_centre"] = u(n, 3, 2, lo=-0.95, hi=0.95)
    p["dot_radius"] = u(n, 3, lo=0.05, hi=0.1)
    p["dot_colour"] = u(n, 3, 3)
    p["noise_sigma"] = u(n, lo=0.01, hi=0.05)
    return p


def _pixel_grid(image_size: int) -> tuple[Tensor, Tensor]:
    """Pixel-centre coordinates in [-1, 1]: X, Y each [H, W] (x right, y up)."""
    c = (torch.arange(image_size, dtype=torch.float32) + 0.5) / image_size * 2 - 1
    yy, xx = torch.meshgrid(-c, c, indexing="ij")
    return xx, yy


def _coverage(sdf: Tensor, pixel: Tensor | float) -> Tensor:
    """Anti-aliased coverage in [0, 1] from a signed distance and the pixel size (same units)."""
    return (0.5 - sdf / pixel).clamp(0.0, 1.0)


def render(labels: Tensor, params: dict[str, Tensor], noise: Tensor) -> Tensor:
    """Render images of the given classes with the given nuisance parameters.

    Args:
        labels: [n] int64 class indices into :data:`SHAPE_CLASSES`.
        params: output of :func:`_sample_params` for the same n images.
        noise: [n, 3, H, W] float32 standard-normal pixel noise (scaled per image here);
            its size sets the image side H = W.

    Returns:
        [n, 3, H, W] uint8 RGB images.
    """
    n, image_size = labels.shape[0], noise.shape[-1]
    xx, yy = _pixel_grid(image_size)  # [H, W]
    pixel = 2.0 / image_size  # pixel side in image coordinates

    # Inverse affine map from image coordinates to each image's shape coordinates: [n, H, W].
    dx = xx[None] - params["centre"][:, 0, None, None]
    dy = yy[None] - params["centre"][:, 1, None, None]
    cos = torch.cos(params["angle"])[:, None, None]
    sin = torch.sin(params["angle"])[:, None, None]
    aspect = torch.exp(params["log_aspect"])[:, None, None]
    scale = params["scale"][:, None, None]
    lx = (cos * dx + sin * dy) / (scale * aspect)
    ly = (-sin * dx + cos * dy) / (scale / aspect)

    sdf = torch.empty(n, image_size, image_size)
    for k, fn in enumerate(_SDFS):
        idx = (labels == k).nonzero(as_tuple=True)[0]
        if idx.numel():
            sdf[idx] = fn(lx[idx], ly[idx])
    # Local lengths are stretched by at most 1 / (scale * min axis factor); use that to
    # express one pixel in shape coordinates for the anti-aliasing ramp.
    local_pixel = pixel / (scale * torch.minimum(aspect, 1.0 / aspect))
    alpha = _coverage(sdf, local_pixel)[:, None]  # [n, 1, H, W]

    shade = params["shading"][:, 0, None, None] * xx + params["shading"][:, 1, None, None] * yy
    bg = params["bg"][:, :, None, None] + shade[:, None]  # [n, 3, H, W]
    img = torch.lerp(bg, params["fg"][:, :, None, None], alpha)

    for j in range(params["dot_on"].shape[1]):
        ddx = xx[None] - params["dot_centre"][:, j, 0, None, None]
        ddy = yy[None] - params["dot_centre"][:, j, 1, None, None]
        d = torch.sqrt(ddx * ddx + ddy * ddy) - params["dot_radius"][:, j, None, None]
        a = _coverage(d, pixel) * params["dot_on"][:, j, None, None]  # [n, H, W]
        img = torch.lerp(img, params["dot_colour"][:, j, :, None, None], a[:, None])

    img = img.add_(noise * params["noise_sigma"][:, None, None, None]).clamp_(0.0, 1.0)
    return img.mul_(255.0).round_().to(torch.uint8)


def generate_shapes(
    n: int,
    *,
    split: str = "train",
    seed: int = 0,
    image_size: int = 32,
    start: int = 0,
) -> tuple[Tensor, Tensor]:
    """Render images ``start .. start + n - 1`` of a split.

    Args:
        n: number of images.
        split: ``"train"`` or ``"test"`` (disjoint seed streams).
        seed: dataset seed.
        image_size: side H = W in pixels (>= 8).
        start: index of the first image.

    Returns:
        images: [n, 3, H, W] uint8; labels: [n] int64 (``index % len(SHAPE_CLASSES)``).
    """
    if split not in SPLITS:
        raise ConfigError(f"shapes split must be one of {SPLITS}, got {split!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"shapes image_size must be an integer >= 8, got {image_size!r}")
    if n < 0 or start < 0:
        raise ConfigError(f"shapes needs n >= 0 and start >= 0, got n={n}, start={start}")
    k = len(SHAPE_CLASSES)
    images = torch.empty(n, 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.arange(start, start + n, dtype=torch.int64) % k
    pos, stop = start, start + n
    while pos < stop:
        chunk = pos // CHUNK
        lo, hi = pos - chunk * CHUNK, min(stop - chunk * CHUNK, CHUNK)  # slice of this chunk
        gen = _chunk_generator(seed, split, chunk)
        # Draw everything for the whole chunk, in a fixed order, then keep the slice: image i
        # is the same whichever range it is rendered in.
        params = {key: v[lo:hi] for key, v in _sample_params(gen, CHUNK).items()}
        noise = torch.randn(CHUNK, 3, image_size, image_size, generator=gen)[lo:hi]
        out = slice(pos - start, pos - start + hi - lo)
        images[out] = render(labels[out], params, noise)
        pos = chunk * CHUNK + hi
    return images, labels


class ShapesDataset(TensorImageDataset):
    """One split of the ``shapes`` dataset, rendered once at construction and kept in memory.

    Items are ``(image: float32 [3, H, W] in [0, 1], label: int)``; ``images`` holds the
    ``uint8 [N, 3, H, W]`` store and ``labels`` the ``int64 [N]`` labels.

    Args:
        split: ``"train"`` or ``"test"``.
        n: number of images; default :data:`DEFAULT_SIZES` (20 000 train, 2 000 test).
        seed: dataset seed; the same (seed, split, index) always gives the same item.
        image_size: side H = W in pixels.
    """

    classes: tuple[str, ...] = SHAPE_CLASSES

    def __init__(
        self, split: str = "train", *, n: int | None = None, seed: int = 0, image_size: int = 32
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"shapes split must be one of {SPLITS}, got {split!r}")
        n = DEFAULT_SIZES[split] if n is None else n
        images, labels = generate_shapes(n, split=split, seed=seed, image_size=image_size)
        super().__init__(images, labels, out_channels=3)
        self.split, self.seed, self.image_size = split, seed, image_size
