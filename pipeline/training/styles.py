"""The image-to-image targets of the three CycleGAN stand-ins: deterministic translations of photos.

Each target is a pure function of a photo (H, W, 3) float in [0, 1] -> float32 (H, W, 3) in [0, 1], made from
the photo's *normalised* version (`data.normalise`: each channel's mean moved to 0.5, the common standard
deviation set to 0.2). A generator that starts with a convolution and an instance norm, as CycleGAN's do, is
blind to an image's global brightness, contrast and colour cast; a target built from the normalised photo is
invariant to them too, so such a network can learn it.

- `paint` (for CycleGAN-VanGogh): Kuwahara smoothing (flat patches, kept edges), strokes smeared along the
  local edge direction, and a colour shift (saturation up, shadows to blue, lights to yellow);
- `woodcut` (for CycleGAN-Ukiyoe): edge-preserving flattening, colours posterised to a few levels, dark
  outlines along strong edges, lights tinted to paper;
- `label` (for CycleGAN-Photo2Label): a segmentation in a facade-label-like palette of saturated colours:
  untextured areas are the uniform background class (blue), textured areas are split by brightness and warmth
  into five classes, cleaned into blocky segments; segments smaller than a window disappear into the
  background (boxes switching on and off). The palette is rendered inside (`LABEL_MARGIN`, 1 − `LABEL_MARGIN`):
  a colour a tanh output reaches at a finite pre-activation, so that the loss sees an output that moves with
  its input inside a segment (with 0 and 1, any large pre-activation scores the same, and the generator is free
  to stay sensitive to its input where the label is flat).

Distances are in pixels of the image given; all filters use reflected borders (like the generators'
reflection padding).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from pipeline.images import RGB_TO_YCBCR
from pipeline.training.data import normalise

_LUMA = RGB_TO_YCBCR[0]


def luminance(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> (H, W): the BT.601 luma, same units."""
    return img @ _LUMA


def box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``a`` (H, W[, C]) over the ``size``×``size`` window whose top-left corner is each pixel; the
    image is extended by reflection at its bottom and right."""
    pad = [(0, size - 1), (0, size - 1)] + [(0, 0)] * (a.ndim - 2)
    c = np.pad(a, pad, mode="reflect").cumsum(0).cumsum(1)
    c = np.pad(c, [(1, 0), (1, 0)] + [(0, 0)] * (a.ndim - 2))
    h, w = a.shape[:2]
    s = c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w] + c[:h, :w]
    return s / (size * size)


def kuwahara(img: np.ndarray, radius: int) -> np.ndarray:
    """Kuwahara filter of ``img`` (H, W, 3): each pixel takes the mean colour of the one of its four
    (radius+1)² quadrant windows whose luminance varies least."""
    size = radius + 1
    pad = [(radius, radius), (radius, radius), (0, 0)]
    big = np.pad(img, pad, mode="reflect")
    lum = luminance(big)
    mean, mean_l, mean_l2 = box_mean(big, size), box_mean(lum, size), box_mean(lum * lum, size)
    var = mean_l2 - mean_l ** 2
    h, w = img.shape[:2]
    # quadrant windows of pixel (y, x) start at (y - radius | y, x - radius | x) in image coordinates
    offsets = [(0, 0), (0, radius), (radius, 0), (radius, radius)]
    variances = np.stack([var[dy:dy + h, dx:dx + w] for dy, dx in offsets])
    means = np.stack([mean[dy:dy + h, dx:dx + w] for dy, dx in offsets])
    best = variances.argmin(0)
    return np.take_along_axis(means, best[None, :, :, None], 0)[0]


def edge_tangent(lum: np.ndarray, sigma_grad: float = 1.0, sigma_tensor: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (ty, tx) along the local edge direction of ``lum`` (H, W): the structure tensor's minor
    eigenvector (Gaussian derivatives at ``sigma_grad``, tensor smoothed at ``sigma_tensor``)."""
    gy = ndimage.gaussian_filter(lum, sigma_grad, order=(1, 0), mode="reflect")
    gx = ndimage.gaussian_filter(lum, sigma_grad, order=(0, 1), mode="reflect")
    jyy, jxx, jxy = (ndimage.gaussian_filter(v, sigma_tensor, mode="reflect") for v in (gy * gy, gx * gx, gx * gy))
    angle = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # direction of the gradient (major eigenvector), x from y
    return np.cos(angle), -np.sin(angle)  # rotated by 90°: (ty, tx)


def smear(img: np.ndarray, ty: np.ndarray, tx: np.ndarray, length: int) -> np.ndarray:
    """Line-integral smoothing: each pixel of ``img`` (H, W, 3) becomes the triangle-weighted mean of the
    ``2·length + 1`` samples along (ty, tx) through it (bilinear samples, reflected borders)."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros_like(img, dtype=np.float64)
    total = 0.0
    for t in range(-length, length + 1):
        weight = length + 1 - abs(t)
        coords = [yy + t * ty, xx + t * tx]
        for c in range(img.shape[2]):
            out[..., c] += weight * ndimage.map_coordinates(img[..., c], coords, order=1, mode="mirror")
        total += weight
    return out / total


def paint(photo: np.ndarray) -> np.ndarray:
    """The painterly target (see the module docstring): Kuwahara radius 3, strokes of length 2·5+1 along
    the edges, then saturation ×1.6 around the luma and a split tone (shadows bluer, lights yellower), squeezed
    into (0.03, 0.97) by `soft_range`."""
    z = normalise(photo)
    k = kuwahara(z, 3)
    ty, tx = edge_tangent(luminance(k))
    s = smear(k, ty, tx, 5)
    lum = luminance(s)[..., None]
    s = lum + 1.6 * (s - lum)
    s = s + (lum - 0.5) * np.array([0.35, 0.2, -0.45])
    return soft_range(s).astype(np.float32)


def soft_range(a: np.ndarray, margin: float = 0.03) -> np.ndarray:
    """Values squeezed smoothly into (margin, 1 - margin): 0.5 + h·tanh((a - 0.5) / h), h = 0.5 - margin
    (slope 1 at 0.5; no hard clipping, which a generator ending in tanh can only approach)."""
    h = 0.5 - margin
    return 0.5 + h * np.tanh((a - 0.5) / h)


#: Grey levels per channel of the woodcut target.
WOODCUT_LEVELS = 4
#: Paper colour the woodcut's lights are tinted towards.
PAPER = np.array([0.96, 0.91, 0.78])


def woodcut(photo: np.ndarray) -> np.ndarray:
    """The woodcut target (see the module docstring): Kuwahara radius 2 twice, each channel posterised to
    ``WOODCUT_LEVELS`` levels, lights tinted to ``PAPER``, and dark outlines (×0.15) where the luma gradient
    of the flattened image (Gaussian σ 1) exceeds 0.045 per pixel."""
    z = normalise(photo)
    flat = kuwahara(kuwahara(z, 2), 2)
    levels = WOODCUT_LEVELS - 1
    poster = np.round(np.clip((flat - 0.5) * 1.8 + 0.5, 0, 1) * levels) / levels
    lum = luminance(poster)[..., None]
    poster = poster + np.clip(lum - 0.5, 0, None) * (PAPER - poster)
    g = ndimage.gaussian_gradient_magnitude(luminance(flat), 1.0, mode="reflect")
    outline = g > 0.045
    out = np.where(outline[..., None], 0.15 * poster, poster)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


#: The label palette (saturated, facade-like): background, then the five foreground classes.
LABEL_PALETTE = np.array([
    [0.0, 0.0, 1.0],   # background: untextured areas
    [0.0, 1.0, 1.0],   # dark, cool
    [0.0, 1.0, 0.0],   # light, cool
    [1.0, 0.0, 0.0],   # dark, warm
    [1.0, 1.0, 0.0],   # light, warm
    [1.0, 0.0, 1.0],   # mid, any warmth
])
#: Local luma standard deviation (11×11 window, normalised photo) under which a pixel is background.
LABEL_TEXTURE = 0.045
#: Segments smaller than this many pixels join the background.
LABEL_MIN_AREA = 96
#: Side of the square window of the local luma standard deviation (pixels).
LABEL_WINDOW = 11
#: Standard deviation of the Gaussian blur before the brightness / warmth classes (pixels).
LABEL_BLUR = 3
#: Side of the square of the opening and closing that make segments blocky (pixels).
LABEL_BLOCK = 7
#: The label target's colours are `LABEL_PALETTE` squeezed into (margin, 1 − margin): 0.1 / 0.9, i.e. ±0.8 in
#: the generator's [-1, 1] units, a tanh pre-activation of ±1.10.
LABEL_MARGIN = 0.1


def label_map(photo: np.ndarray) -> np.ndarray:
    """The class of each pixel (H, W) int in 0..5 (`LABEL_PALETTE` order); see `label`."""
    z = normalise(photo)
    lum = luminance(z)
    mean = ndimage.uniform_filter(lum, LABEL_WINDOW, mode="reflect")
    std = np.sqrt(np.clip(ndimage.uniform_filter(lum * lum, LABEL_WINDOW, mode="reflect") - mean ** 2, 0, None))
    g = ndimage.gaussian_filter(z, (LABEL_BLUR, LABEL_BLUR, 0), mode="reflect")
    gl = luminance(g)
    warm = g[..., 0] - g[..., 2] > 0.0
    cls = np.where(gl < 0.44, np.where(warm, 3, 1), np.where(gl > 0.56, np.where(warm, 4, 2), 5))
    cls = np.where(std < LABEL_TEXTURE, 0, cls)
    # blocky segments: per class, opening then closing with a square; later classes win overlaps
    square = np.ones((LABEL_BLOCK, LABEL_BLOCK), dtype=bool)
    out = np.zeros_like(cls)
    for k in range(1, len(LABEL_PALETTE)):
        mask = ndimage.binary_closing(ndimage.binary_opening(cls == k, square), square)
        out[mask] = k
    seg, n = ndimage.label(out > 0)
    if n:
        sizes = ndimage.sum_labels(np.ones_like(seg), seg, index=np.arange(1, n + 1))
        out[np.isin(seg, 1 + np.flatnonzero(sizes < LABEL_MIN_AREA))] = 0
    return out


def label(photo: np.ndarray) -> np.ndarray:
    """The label target: `label_map` rendered in `label_colours()`, float32 (H, W, 3) in [0, 1]."""
    return label_colours()[label_map(photo)].astype(np.float32)


def label_colours() -> np.ndarray:
    """(6, 3) float64: the colours of the label target, `LABEL_PALETTE` squeezed into (`LABEL_MARGIN`,
    1 − `LABEL_MARGIN`)."""
    return LABEL_PALETTE * (1 - 2 * LABEL_MARGIN) + LABEL_MARGIN


#: name -> target function, for the training tasks and the model cards.
STYLES = {"paint": paint, "woodcut": woodcut, "label": label}
