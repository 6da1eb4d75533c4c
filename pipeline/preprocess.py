"""How an image becomes a classifier's input: the one function `linterp run` and `linterp classify` share.

``classifier_inputs(images, spec)`` maps uint8 images (N, H, W, C) of any size, RGB or grey, to the model's
input (N, C_in, h, w) float32 in ``spec.value_range``, with one record per image of what was done (written to
``results.json``). The method is the model's ``spec.preprocess``:

- ``"photo"`` (ImageNet classifiers, torchvision's presets): convert to the model's colour (grey ↔ RGB by
  BT.601 luma), resize so that the shorter side is ``side / crop_ratio`` (bilinear, antialiased; 256 → 224 for a
  224 input) and cut out the centre h × w.
- ``"drawing"`` (the digits models: a light figure on a dark plain background, values in [0, 1]):
  1. grey: BT.601 luma of RGB (a transparent background is composited first, see ``images.flatten_alpha``);
  2. polarity: the background level b is the median of the image's outer ring of pixels; with
     ``polarity="auto"`` the image is inverted (1 − x) when b > 0.5, i.e. dark ink on light paper becomes light
     ink on black as the model expects; ``"keep"`` / ``"invert"`` force the choice;
  3. fit: resized keeping the aspect ratio so that its longer side is the model's (bilinear, antialiased when
     shrinking) and padded to h × w, centred, with b;
  4. levels: (x − b) / (p − b) clipped to [0, 1], p the brightest value after the fit, so the background is 0 and
     the strongest stroke 1 (skipped, only x − b clipped, when p − b < ``MIN_CONTRAST``: a blank image).

Everything is a pure function of the pixels; batches of same-size images are processed together.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import images

#: Values of ``--polarity``.
POLARITIES = ("auto", "keep", "invert")
#: torchvision's resize-then-crop ratio (256 → 224) for the "photo" method.
PHOTO_CROP_RATIO = 0.875
#: The photo method resizes the whole image, then crops, unless the resized image would have more than this many
#: times the crop's pixels (a thin image: 4000×1 becomes 1 024 000×256, 6 GB of float64 RGB); then it resizes one
#: axis, crops it, and resizes the other (bilinear antialiased resizing is separable: the same values, to rounding).
SEPARABLE_RESIZE = 16
#: Below this contrast (in [0, 1] grey units) between the brightest value and the background, a drawing is
#: taken as blank and its levels are not stretched.
MIN_CONTRAST = 0.05


class PreprocessError(images.ImageError):
    """An image or size that a classifier cannot take; the message is one line."""


def input_size(name: str, spec, size: int | None = None) -> tuple[tuple[int, int], float]:
    """(input height, width) and crop ratio of a classifier: ``size`` (a side), else the spec's fixed size, else
    torchvision's recommended side (224, Inception 299) with the 0.875 crop of its presets."""
    from pipeline.models.classifiers import CLASSIFIERS

    if spec.fixed_size is not None:
        if size is not None and (size, size) != tuple(spec.fixed_size):
            h, w = spec.fixed_size
            raise PreprocessError(f"takes only {h}×{w} inputs, got --size {size}")
        return tuple(spec.fixed_size), 1.0
    side = size or (CLASSIFIERS[name][1] if name in CLASSIFIERS else 224)
    if side < spec.min_size:
        raise PreprocessError(f"needs inputs of at least {spec.min_size} pixels, got --size {side}")
    return (side, side), PHOTO_CROP_RATIO if name in CLASSIFIERS else 1.0


def classifier_input(img: np.ndarray, spec, size: tuple[int, int] | None = None, crop_ratio: float | None = None,
                     polarity: str = "auto", source_channels: int | None = None,
                     source_colour: str | None = None) -> tuple[torch.Tensor, dict]:
    """One uint8 image (H, W, C) -> (x0 (1, C_in, h, w) float32 in the model's value range, record)."""
    x, records = classifier_inputs(img[None], spec, size, crop_ratio, polarity, source_channels, source_colour)
    return x, records[0]


def classifier_inputs(batch: np.ndarray, spec, size: tuple[int, int] | None = None,
                      crop_ratio: float | None = None, polarity: str = "auto",
                      source_channels: int | None = None,
                      source_colour: str | None = None) -> tuple[torch.Tensor, list[dict]]:
    """uint8 images (N, H, W, C), C = 1 or 3 -> (x (N, C_in, h, w) float32 in ``spec.value_range``, records).

    ``size`` / ``crop_ratio``: the input size and the photo crop ratio (default: ``input_size(spec.name, spec)``).
    ``source_channels``, ``source_colour``: the samples per pixel of the file the images were read from and its
    colour, as ``images.load_image_file`` gives them (default: C and ``images.COLOURS`` of it; an RGBA file read
    as RGB, its alpha composited: 4, "RGBA"; a CMYK file: 4, "CMYK converted to RGB").
    Each record says what was done: ``method``, ``source_size`` [H, W], ``source_channels``, ``source_colour``,
    ``input_size`` [h, w], and per method ``resized`` [h', w'] and ``crop`` [top, left] (photo) or ``polarity``
    ("kept"/"inverted"), ``background`` b (after the polarity step), ``peak`` p, ``fitted`` [h', w'] (drawing).
    """
    if polarity not in POLARITIES:
        raise PreprocessError(f"polarity must be one of {', '.join(POLARITIES)}, got '{polarity}'")
    if batch.ndim != 4 or batch.shape[3] not in (1, 3) or batch.dtype != np.uint8:
        raise PreprocessError(f"expected uint8 images (N, H, W, 1 or 3), got {batch.dtype} {batch.shape}")
    if size is None:
        size, default_ratio = input_size(spec.name, spec)
        crop_ratio = default_ratio if crop_ratio is None else crop_ratio
    n, h, w, c = batch.shape
    if spec.preprocess == "drawing":
        if spec.in_channels != 1:
            raise PreprocessError(f"{spec.name}: the 'drawing' preprocessing makes 1-channel inputs")
        grey = _grey(batch)
        x, extra = _drawing(grey, tuple(size), polarity)
    elif spec.preprocess == "photo":
        x, extra = _photo(batch, spec, tuple(size), crop_ratio or 1.0)
    else:
        raise PreprocessError(f"{spec.name}: unknown preprocessing '{spec.preprocess}'")
    lo, hi = spec.value_range
    channels = source_channels or c
    base = {"method": spec.preprocess, "source_size": [h, w], "source_channels": channels,
            "source_colour": source_colour or images.COLOURS[channels],
            "input_size": list(size)}
    return (lo + (hi - lo) * x).float().contiguous(), [base | e for e in extra]


def _grey(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float64 (N, 1, H, W) grey in [0, 1] (BT.601 luma of RGB)."""
    values = batch.astype(np.float64) / 255.0
    if values.shape[3] == 3:
        values = values @ images.RGB_TO_YCBCR[0][:, None]
    return torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))


def border_level(x: torch.Tensor) -> torch.Tensor:
    """The background level of images (N, 1, H, W): the median of each one's outer ring of pixels, (N,)."""
    ring = torch.cat([x[:, 0, 0, :], x[:, 0, -1, :], x[:, 0, 1:-1, 0], x[:, 0, 1:-1, -1]], dim=1)
    return ring.median(dim=1).values


def fit(x: torch.Tensor, size: tuple[int, int], background: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize (N, 1, H, W) keeping the aspect ratio to fit ``size`` (bilinear, antialiased when shrinking), then
    pad to ``size``, centred, with each image's ``background`` (N,). Returns the images and the fitted (h', w')."""
    (th, tw), (h, w) = size, x.shape[-2:]
    scale = min(th / h, tw / w)
    fh, fw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    if (fh, fw) != (h, w):
        x = F.interpolate(x, size=(fh, fw), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if (fh, fw) != (th, tw):
        out = background.view(-1, 1, 1, 1).expand(x.shape[0], 1, th, tw).clone()
        top, left = (th - fh) // 2, (tw - fw) // 2
        out[:, :, top:top + fh, left:left + fw] = x
        x = out
    return x, (fh, fw)


def stretch(x: torch.Tensor, background: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Levels of light-on-dark images (N, 1, H, W): (x − b) / (p − b) clipped to [0, 1], p = each image's maximum;
    only x − b clipped where p − b < ``MIN_CONTRAST``. Returns the images and p (N,)."""
    b = background.view(-1, 1, 1, 1)
    peak = x.amax(dim=(1, 2, 3))
    span = (peak.view(-1, 1, 1, 1) - b)
    span = torch.where(span < MIN_CONTRAST, torch.ones_like(span), span)
    return ((x - b) / span).clamp(0, 1), peak


def _drawing(grey: torch.Tensor, size: tuple[int, int], polarity: str) -> tuple[torch.Tensor, list[dict]]:
    level = border_level(grey)
    invert = level > 0.5 if polarity == "auto" else torch.full_like(level, polarity == "invert", dtype=torch.bool)
    grey = torch.where(invert.view(-1, 1, 1, 1), 1 - grey, grey)
    level = torch.where(invert, 1 - level, level)
    x, fitted = fit(grey, size, level)
    x, peak = stretch(x, level)
    return x, [{"polarity": "inverted" if bool(i) else "kept", "background": round(float(b), 6),
                "peak": round(float(p), 6), "fitted": list(fitted)} for i, b, p in zip(invert, level, peak)]


def _photo(batch: np.ndarray, spec, size: tuple[int, int], crop_ratio: float) -> tuple[torch.Tensor, list[dict]]:
    if spec.colour == "rgb" and batch.shape[3] == 1:
        batch = np.repeat(batch, 3, axis=3)
    values = np.stack([images.model_channels(img, spec) for img in batch]) / 255.0
    x = torch.from_numpy(np.ascontiguousarray(values.transpose(0, 3, 1, 2)))
    h, w = x.shape[-2:]
    th, tw = size
    s = max(th / crop_ratio / h, tw / crop_ratio / w)
    rh, rw = max(th, round(h * s)), max(tw, round(w * s))
    top, left = (rh - th) // 2, (rw - tw) // 2
    x = resize_crop(x, (rh, rw), (top, left, th, tw)).clamp(0, 1)
    return x, [{"resized": [rh, rw], "crop": [top, left]}] * len(batch)


def resize_crop(x: torch.Tensor, size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Images (N, C, H, W) resized to ``size`` (h', w') (bilinear, antialiased), then cropped to ``box`` (top,
    left, height, width) of the resized image: (N, C, height, width). Past ``SEPARABLE_RESIZE`` times the box's
    pixels the resized image is never made whole: one axis is resized and cropped before the other is resized,
    in the order that makes fewer pixels."""
    (rh, rw), (top, left, bh, bw), (h, w) = size, box, x.shape[-2:]

    def resize(t, shape):
        return F.interpolate(t, size=shape, mode="bilinear", align_corners=False, antialias=True)

    if rh * rw <= SEPARABLE_RESIZE * bh * bw:
        return resize(x, (rh, rw))[:, :, top:top + bh, left:left + bw]
    if h * rw + rh * bw <= rh * w + bh * rw:  # columns first: an H × w' image, then h' × width
        return resize(resize(x, (h, rw))[:, :, :, left:left + bw], (rh, bw))[:, :, top:top + bh]
    return resize(resize(x, (rh, w))[:, :, top:top + bh], (bh, rw))[:, :, :, left:left + bw]


def describe(record: dict) -> str:
    """One line for people: what ``classifier_inputs`` did to an image (from its record)."""
    h, w = record["source_size"]
    colour = record["source_colour"]
    ih, iw = record["input_size"]
    if record["method"] == "drawing":
        fh, fw = record["fitted"]
        return (f"input {w}×{h} {colour} -> grey, {record['polarity']} (background {record['background']:.2f}), "
                f"fitted to {fw}×{fh} in {iw}×{ih}, levels {record['background']:.2f}..{record['peak']:.2f} -> 0..1")
    rh, rw = record["resized"]
    return f"input {w}×{h} {colour} -> resized to {rw}×{rh}, centre {iw}×{ih}"
