"""Images: load, validate, crop, colour conversions, and the mapping between images and a model's units.

Images are numpy uint8 arrays (H, W, C) with C = 3 (RGB) or 1 (grayscale). Model tensors are float32
(1, C, H, W) in the model's ``ModelSpec.value_range``. YCbCr is JFIF full range (as PIL's 'YCbCr' mode).
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch

#: The default image: the astronaut's face from scikit-image's bundled ``astronaut()`` (top, left, height, width).
DEFAULT_IMAGE_NAME = "astronaut-face"
DEFAULT_IMAGE_BOX = (60, 176, 96, 96)

#: JFIF / ITU-T T.871 full-range RGB -> YCbCr (rows Y, Cb, Cr), offsets in 0..255 units.
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168736, -0.331264, 0.5],
                         [0.5, -0.418688, -0.081312]])
YCBCR_OFFSET = np.array([0.0, 128.0, 128.0])


class ImageError(ValueError):
    """An image that cannot be read or does not suit a model; the message is one line."""


def load_image(path: str | os.PathLike, composite_alpha: bool = False) -> np.ndarray:
    """The image at ``path`` as uint8 (H, W, 3) RGB, or (H, W, 1) when the file is grayscale.

    Alpha is dropped (``composite_alpha``: composited, see ``flatten_alpha``), 16-bit samples are scaled to
    8 bits, and an animation or a multi-page TIFF gives its first frame. As image viewers show it: CMYK and
    YCbCr converted to RGB, a transparency entry (a PNG's tRNS, a GIF's transparent index) read as alpha, and
    the EXIF orientation applied (so that a crop's X, Y are those of the picture on screen).
    """
    return load_image_file(path, composite_alpha)[0]


#: Colours read converted, as viewers show them: Pillow mode -> (the mode read, samples per pixel of the file,
#: the file's colour as recorded).
CONVERTED_MODES = {"CMYK": ("RGB", 4, "CMYK converted to RGB"), "YCbCr": ("RGB", 3, "YCbCr converted to RGB")}
#: Modes with a transparency entry (a PNG's tRNS chunk, a GIF's transparent index), read with its alpha.
TRANSPARENT_MODES = {"P": ("RGBA", 4, "RGBA"), "L": ("LA", 2, "grey + alpha"), "RGB": ("RGBA", 4, "RGBA")}
#: Colour spaces that linterp does not convert (refused): Pillow mode -> name.
UNCONVERTED_MODES = {"LAB": "CIELAB", "HSV": "HSV"}
#: Samples per pixel of a file read as stored -> its colour as recorded.
COLOURS = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}


def load_image_file(path: str | os.PathLike, composite_alpha: bool = False) -> tuple[np.ndarray, int, str]:
    """(``load_image``'s pixels, the samples per pixel of the file, its colour), for records that say what the
    file held: an RGBA file is (…, 4, "RGBA"), computed on as RGB; a CMYK one (…, 4, "CMYK converted to RGB")."""
    try:
        mode, transparent, orientation = _pillow_mode_and_orientation(path)  # first: Pillow refuses huge sizes
        if mode in UNCONVERTED_MODES:
            raise ImageError(f"{path} is a {UNCONVERTED_MODES[mode]} image; linterp reads grey, RGB and CMYK "
                             f"images (convert it to RGB first)")
        rule = CONVERTED_MODES.get(mode) or (TRANSPARENT_MODES.get(mode) if transparent else None)
        data = first_frame(path) if rule is None else _pillow_pixels(path, rule[0])
    except ImageError:
        raise
    except Exception as err:  # imageio raises many types (OSError, ValueError, plugin errors) for bad files
        raise ImageError(f"cannot read image {path}: {_read_failure(path, err)}") from err
    img = as_uint8_image(_oriented(data, orientation), str(path), composite_alpha)  # refuses > 4 samples
    channels = data.shape[2] if data.ndim == 3 else 1
    _, channels, colour = rule or (None, channels, COLOURS[channels])
    return img, channels, colour


def _pillow_pixels(path, mode: str) -> np.ndarray:
    """The first frame of an image file as Pillow converts it to ``mode`` (H, W[, C]) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert(mode))


def first_frame(path: str | os.PathLike) -> np.ndarray:
    """The pixels of the first image in a file, as its reader gives them (H, W[, C]): the image itself, an
    animation's first frame, a TIFF's first page (imageio's ``index=0`` is a TIFF's first *series*, which holds
    every page of a multi-page file that Pillow or tifffile wrote) with its samples last (planar TIFFs store
    them first: (C, H, W)). A TIFF whose compression tifffile cannot decode without the optional ``imagecodecs``
    (LZW, JPEG: the usual ones of scanners and photo editors) is read by Pillow, and so is a file whose extension
    names a format it is not in when the reader of that format fails (a PNG named .img: imageio's ITK plugin)."""
    import imageio.v3 as iio

    try:
        with iio.imopen(path, "r", legacy_mode=True) as file:
            if type(file).__name__ != "TifffilePlugin":
                return np.asarray(file.read(index=0))
    except Exception as err:  # noqa: BLE001 - imageio raises many types, as below
        return _pillow_first_frame(path, err)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            problem = _tiff_problem(tif, page)
            if problem:
                raise ImageError(f"{path} {problem}")
            data = np.asarray(page.asarray())
            return np.moveaxis(data, 0, -1) if page.axes == "SYX" else data
    except ImageError:
        raise
    except Exception as err:  # noqa: BLE001 - tifffile raises ValueError, KeyError, … for codecs it lacks
        return _pillow_first_frame(path, err)


def _pillow_first_frame(path, err: Exception) -> np.ndarray:
    """``first_frame`` as read by imageio's Pillow plugin, when the reader chosen first failed with ``err``; that
    reader's error when Pillow cannot read the file either (its reason is the better one)."""
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path, index=0, plugin="pillow"))
    except Exception:  # noqa: BLE001
        raise err from None


def _tiff_problem(tif, page) -> str | None:
    """Why linterp refuses a TIFF's first page, after the file's name (None: it reads it): a size past Pillow's
    limit against decompression bombs (tifffile has none: it would allocate whatever the header claims), extra
    samples that are not alpha (TIFF ExtraSamples 0, 'unspecified': a viewer drops them), or an (H, W, C) array
    that tifffile or imageio stored as H pages of W × C pixels (they do so when C is not 1, 3 or 4)."""
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and page.imagewidth * page.imagelength > 2 * limit:
        return (f"is {page.imagewidth}×{page.imagelength} pixels, more than {2 * limit} (Pillow's limit against "
                f"decompression bombs)")
    unspecified = sum(int(kind) == 0 for kind in page.extrasamples)
    if unspecified:
        colour = COLOURS.get(page.samplesperpixel - len(page.extrasamples), "colour")
        return (f"has {page.samplesperpixel} samples per pixel ({colour} and {unspecified} unspecified, not "
                f"alpha); linterp reads grey and RGB images, with or without alpha")
    shape = tif.series[0].shape
    if tif.is_shaped and len(shape) == 3 and len(tif.pages) > 1 and page.shape == shape[1:] \
            and shape[2] < min(shape[:2]):
        return (f"holds an array of shape {shape} stored as {shape[0]} pages of {shape[2]}×{shape[1]} pixels "
                f"(tifffile and imageio store an (H, W, C) array so when C is not 1, 3 or 4); save a grey + alpha "
                f"image as PNG, other channels one per file")
    return None


def _read_failure(path, err: BaseException) -> str:
    """Why a file could not be read, in a few words: an empty file and a file no reader knows are named as
    such (imageio's message for both suggests installing plugins for video files)."""
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return "the file is empty"
    except OSError:
        pass
    detail = [line.strip() for line in str(err).splitlines() if line.strip()]
    if (detail and detail[0].startswith("Could not find a backend")) or not _identified(path):
        return "not an image file that linterp can read (PNG, JPEG, TIFF, BMP, GIF, WebP, …)"
    return detail[0] if detail else type(err).__name__


def _identified(path) -> bool:
    """Whether Pillow recognises the file as an image of some format (a truncated or damaged one included): a
    file it does not gets the plain "not an image file" rather than a reader's parse error about a few bytes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except UnidentifiedImageError:
        return False
    except Exception:  # noqa: BLE001 - recognised, but unreadable: the reader's own reason is the better one
        return True


#: EXIF orientation (tag 274) -> the turns and flips that show the stored pixels upright: (quarter turns
#: anticlockwise, flip left-right first)
EXIF_ORIENTATION = {1: (0, False), 2: (0, True), 3: (2, False), 4: (2, True), 5: (1, True), 6: (3, False),
                    7: (3, True), 8: (1, False)}


def _pillow_mode_and_orientation(path) -> tuple[str | None, bool, int]:
    """(PIL mode, whether it has a transparency entry, EXIF orientation 1..8) of an image file; (None, False, 1)
    for files Pillow does not open. Pillow's ``DecompressionBombError`` (a size past its limit) passes."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.mode, "transparency" in im.info, int(im.getexif().get(274, 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None, False, 1


def _oriented(data: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels (H, W, …) as stored -> as shown upright, for an EXIF orientation (unknown values: unchanged)."""
    turns, flip = EXIF_ORIENTATION.get(orientation, (0, False))
    return np.rot90(data[:, ::-1] if flip else data, turns)


def as_uint8_image(data: np.ndarray, label: str = "image", composite_alpha: bool = False) -> np.ndarray:
    """An array from an image file as uint8 (H, W, 1 or 3); alpha dropped, or composited by ``flatten_alpha``."""
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3 and data.shape[2] > 4 and min(data.shape[:2]) >= 1:
        raise ImageError(f"{label} has {data.shape[2]} samples per pixel (array shape {data.shape}); linterp "
                         f"reads grey and RGB images, with or without alpha")
    if data.ndim != 3 or data.shape[2] not in (1, 2, 3, 4) or min(data.shape[:2]) < 1:
        raise ImageError(f"{label} is not a 2-D image (array shape {data.shape})")
    if data.dtype == np.uint16:
        data = np.round(data / 257.0).astype(np.uint8)
    elif data.dtype == bool:
        data = data.astype(np.uint8) * 255
    elif np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise ImageError(f"{label} holds {int((~np.isfinite(data)).sum())} NaN or infinite samples; save it "
                             f"with finite samples in 0..1 or with 8- or 16-bit integer samples")
        low, high = float(data.min()), float(data.max())
        if not -0.5 / 255 <= low <= high <= 1 + 0.5 / 255:  # samples that round to 0..255 are clipped, not refused
            raise ImageError(f"{label} holds floating-point samples from {low:g} to {high:g}, not in 0..1; save "
                             f"it with 8- or 16-bit integer samples")
        data = np.round(np.clip(data, 0.0, 1.0) * 255).astype(np.uint8)
    elif data.dtype != np.uint8:
        raise ImageError(f"{label} has unsupported sample type {data.dtype}")
    if data.shape[2] in (2, 4):
        data = flatten_alpha(data) if composite_alpha else data[:, :, :-1]
    return np.ascontiguousarray(data)


def flatten_alpha(data: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C + 1) with alpha last -> (H, W, C) composited over black or white, whichever contrasts
    with the opaque content: white under dark content (mean alpha-weighted luma below 128), black under light
    content. A drawing on a transparent background thus keeps its strokes visible whatever their colour."""
    colour, alpha = data[:, :, :-1].astype(np.float64), data[:, :, -1:].astype(np.float64) / 255.0
    luma = colour @ RGB_TO_YCBCR[0] if colour.shape[2] == 3 else colour[:, :, 0]
    weight = alpha[:, :, 0].sum()
    mean = (luma * alpha[:, :, 0]).sum() / weight if weight > 0 else 0.0
    background = 255.0 if mean < 128 else 0.0
    return np.round(colour * alpha + background * (1 - alpha)).astype(np.uint8)


def parse_crop(text: str) -> tuple[int, int, int, int]:
    """``"X,Y,W,H"`` (left, top, width, height in pixels) -> (x, y, w, h); raises ``ImageError`` when malformed."""
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", text or "", re.ASCII)
    if not match:
        raise ImageError(f"crop '{text}' is not X,Y,W,H (four non-negative integers, e.g. 10,20,64,64)")
    x, y, w, h = map(int, match.groups())
    if w == 0 or h == 0:
        raise ImageError(f"crop '{text}' is empty (width and height must be positive)")
    return x, y, w, h


def crop(img: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``img[y:y+h, x:x+w]`` for ``box = (x, y, w, h)``; the box must lie inside the image."""
    x, y, w, h = box
    height, width = img.shape[:2]
    if x + w > width or y + h > height:
        raise ImageError(f"crop {x},{y},{w},{h} goes outside the {width}×{height} image")
    return img[y:y + h, x:x + w]


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB (…, 3) in 0..255 -> float64 YCbCr (…, 3) in 0..255, JFIF full range (unrounded)."""
    return np.asarray(rgb, dtype=np.float64) @ RGB_TO_YCBCR.T + YCBCR_OFFSET


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """The exact inverse of ``rgb_to_ycbcr``: float64 RGB (…, 3), unclipped."""
    return (np.asarray(ycbcr, dtype=np.float64) - YCBCR_OFFSET) @ np.linalg.inv(RGB_TO_YCBCR).T


def default_image() -> tuple[str, np.ndarray]:
    """(name, uint8 (96, 96, 3)): the astronaut's face, cropped from scikit-image's bundled sample."""
    from skimage import data

    top, left, height, width = DEFAULT_IMAGE_BOX
    return DEFAULT_IMAGE_NAME, np.ascontiguousarray(data.astronaut()[top:top + height, left:left + width])


def check_size(img: np.ndarray, spec) -> None:
    """Raise ``ImageError`` unless the image's height and width meet the model's constraints."""
    height, width = img.shape[:2]
    if spec.fixed_size is not None and (height, width) != tuple(spec.fixed_size):
        fh, fw = spec.fixed_size
        raise ImageError(f"{spec.name} needs a {fw}×{fh} image, got {width}×{height} (use --crop X,Y,W,H)")
    if min(height, width) < spec.min_size:
        raise ImageError(f"{width}×{height} is too small for {spec.name}: it needs at least "
                         f"{spec.min_size}×{spec.min_size} pixels")
    if height % spec.multiple or width % spec.multiple:
        raise ImageError(f"{spec.name} needs a height and width that are multiples of {spec.multiple}, got "
                         f"{width}×{height} (crop to {width - width % spec.multiple}×{height - height % spec.multiple})")


def needs_rgb(name: str) -> ImageError:
    """The error for a grey image given to a model that takes RGB, with how to convert it."""
    return ImageError(f"{name} needs an RGB image; this one is grayscale (save it as RGB first, e.g. with Pillow: "
                      f"Image.open(path).convert('RGB').save('rgb.png'))")


def model_channels(img: np.ndarray, spec) -> np.ndarray:
    """The image's samples in the model's colour space: float64 (H, W, C) in 0..255."""
    if spec.colour == "rgb":
        if img.shape[2] != 3:
            raise needs_rgb(spec.name)
        return img.astype(np.float64)
    if img.shape[2] == 1:  # a grayscale image is its own Y
        return img.astype(np.float64)
    return rgb_to_ycbcr(img)[:, :, :1]


def to_input(img: np.ndarray, spec) -> torch.Tensor:
    """uint8 (H, W, C) -> the model's input (1, C_in, H, W) float32 in ``spec.value_range`` (after size checks)."""
    check_size(img, spec)
    lo, hi = spec.value_range
    values = lo + (hi - lo) * model_channels(img, spec) / 255.0
    return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)[None])).float()


def to_image(y: torch.Tensor, spec) -> np.ndarray:
    """A model's image output (1, C, H, W) in ``spec.value_range`` -> uint8 (H, W, C), clipped and rounded."""
    if y.ndim != 4 or y.shape[0] != 1:
        raise ValueError(f"expected an output of shape (1, C, H, W), got {tuple(y.shape)}")
    lo, hi = spec.value_range
    values = (y[0].detach().double().cpu().numpy().transpose(1, 2, 0) - lo) * (255.0 / (hi - lo))
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def merge_luma(y_image: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """A Y-channel result (H', W', 1) uint8 with the chroma of ``rgb`` (H, W, 3), upscaled bicubically to H'×W'.

    As the super-resolution example does: Cb and Cr come from the input, resized with bicubic interpolation
    (torch's kernel, a = −0.75), and the merged YCbCr is converted back to RGB uint8.
    """
    import torch.nn.functional as F

    out_h, out_w = y_image.shape[:2]
    chroma = torch.from_numpy(rgb_to_ycbcr(rgb)[:, :, 1:].transpose(2, 0, 1)[None].copy())
    chroma = F.interpolate(chroma, size=(out_h, out_w), mode="bicubic", align_corners=False)[0].numpy()
    ycbcr = np.concatenate([y_image.astype(np.float64), chroma.transpose(1, 2, 0)], axis=2)
    return np.clip(np.round(ycbcr_to_rgb(ycbcr)), 0, 255).astype(np.uint8)
