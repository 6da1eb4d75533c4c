"""Training and evaluation data from installed packages only (no downloads).

Photos come from `skimage.data` (the ones shipped inside the scikit-image wheel) and from Debian's packages
`lomiri-wallpapers-16.04` (15 photographs under /usr/share/backgrounds) and `opencv-doc` (OpenCV's sample
images); digits from `sklearn.datasets.load_digits`. Everything here is a pure function of its arguments, so a
seed fixes a run.

Conventions: photos are float32 arrays (H, W, 3) in [0, 1] (grey photos repeated over the 3 channels);
tensors are (N, C, H, W).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.images import RGB_TO_YCBCR

#: scikit-image sample images used for training (natural photos, textures, microscopy, documents).
SKIMAGE_TRAIN_PHOTOS = (
    "chelsea", "rocket", "stereo_motorcycle", "coins", "moon", "clock", "brick", "grass", "gravel",
    "immunohistochemistry", "hubble_deep_field", "page", "text", "cell",
)
#: Prefixes of the names of the photographs of ``lomiri-wallpapers-16.04`` and of ``opencv-doc``.
DEBIAN_PREFIX, OPENCV_PREFIX = "lomiri:", "opencv:"
#: Debian packages whose photographs are used, by name prefix: photo ``"<prefix><file stem>"`` is the file of
#: that stem in the package's folder. ``lomiri-wallpapers-16.04``: 15 photographs (2–4 Mpixel camera files);
#: ``opencv-doc``: OpenCV's sample images (photographs, drawings and text pages, ≤ 1.4 Mpixel).
DEBIAN_SOURCES = {
    DEBIAN_PREFIX: ("lomiri-wallpapers-16.04", Path("/usr/share/backgrounds")),
    OPENCV_PREFIX: ("opencv-doc", Path("/usr/share/doc/opencv-doc/examples/data")),
}
#: Longest side, in pixels, that the Debian photographs are reduced to before use: the lomiri ones (2–4 Mpixel
#: camera files) are smooth at the pixel scale at full size (lens blur, JPEG); reduced, they have the detail per
#: pixel of the scikit-image photos (of OpenCV's, only `aloeL` is larger).
DEBIAN_MAX_SIDE = 1024
#: The natural photographs of ``lomiri-wallpapers-16.04`` used for training (its abstract renderings,
#: ``analogpattern`` and ``umang``, are not used).
DEBIAN_TRAIN_PHOTOS = tuple(DEBIAN_PREFIX + n for n in (
    "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
    "aitzgorri_by_Aitzol_Berasategi", "free_by_Peter_Nerlich", "life_by_Aitzol_Berasategi",
    "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
))
#: The colour photographs among OpenCV's sample images (chosen by content before any training on them: no
#: drawing, logo, text page, painting, grey image or second view of a stereo or before/after pair), for the
#: image-to-image stand-ins whose targets depend on hue: aerial views, a plant, fruit, a baboon, a circuit
#: board, buildings, a butterfly, a dog, a notebook, graffiti, books, a car, a footballer, toys, sweets and
#: a squirrel.
OPENCV_COLOUR_PHOTOS = tuple(OPENCV_PREFIX + n for n in (
    "aero1", "aero3", "aloeL", "apple", "baboon", "board", "building", "butterfly", "chicky_512",
    "ela_original", "fruits", "graf1", "home", "left", "leuvenA", "licenseplate_motion", "messi5", "orange",
    "rubberwhale1", "smarties", "squirrel_cls",
))
#: The training photos of the photo models (super-resolution and image-to-image stand-ins; i2i-paint and i2i-label
#: add `OPENCV_COLOUR_PHOTOS`, see `recipes.COLOUR_PHOTOS`).
TRAIN_PHOTOS = SKIMAGE_TRAIN_PHOTOS + DEBIAN_TRAIN_PHOTOS
#: Held out from every training run and never used to choose a recipe: `astronaut` is the project's demo
#: image; the four Debian photographs are an indoor still life, a dog on wooden boards, a clock and a mountain
#: landscape.
HELD_OUT_PHOTOS = ("astronaut", "camera", "coffee") + tuple(DEBIAN_PREFIX + n for n in (
    "Wine_by_Jakkub_Mede", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
    "picosdeeuropa_by_Aitzol_Berasategi",
))


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A training or evaluation photo as float32 (H, W, 3) in [0, 1]; grey ones are repeated to 3 channels.

    ``name`` is a scikit-image sample (``"coins"``; `stereo_motorcycle` gives its left view) or
    ``"<prefix><stem>"``, a photograph of a Debian package of `DEBIAN_SOURCES` reduced (antialiased bicubic)
    so that its longest side is at most ``DEBIAN_MAX_SIDE`` and rounded to 8 bits. Raises ValueError for an
    unknown name, or one whose package is not installed (naming the package).
    """
    for prefix, (package, folder) in DEBIAN_SOURCES.items():
        if name.startswith(prefix):
            return _debian_photo(name[len(prefix):], package, folder)
    import skimage.data

    loader = getattr(skimage.data, name, None)
    if loader is None:
        raise ValueError(f"'{name}' is not a scikit-image sample image")
    return _as_float_rgb(loader())


def _as_float_rgb(img) -> np.ndarray:
    """An image array (a tuple gives its first element) -> float32 (H, W, 3) in [0, 1]."""
    if isinstance(img, tuple):
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _debian_photo(stem: str, package: str, folder: Path) -> np.ndarray:
    matches = sorted(folder.glob(f"{stem}.*"))
    if not matches:
        raise ValueError(f"photo '{stem}' not found in {folder}: install Debian's package "
                         f"{package} (apt-get install {package})")
    import imageio.v3 as iio

    img = to_tensor(_as_float_rgb(iio.imread(matches[0])))
    factor = DEBIAN_MAX_SIDE / max(img.shape[-2:])
    if factor < 1:
        size = (round(img.shape[-2] * factor), round(img.shape[-1] * factor))
        img = F.interpolate(img, size=size, mode="bicubic", align_corners=False, antialias=True)
    img = torch.round(img.clamp(0, 1) * 255) / 255
    return np.ascontiguousarray(img[0].permute(1, 2, 0).numpy())


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (1, C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """Y of RGB (N, 3, H, W) -> (N, 1, H, W), same units (JFIF full range, as `pipeline.images`; no offset)."""
    w = torch.from_numpy(RGB_TO_YCBCR[0]).to(rgb.dtype).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def bicubic_down(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The LR image of a super-resolution pair, in [0, 1], quantised to 8 bits.

    `hr` (N, C, H, W) in [0, 1] with H, W multiples of `scale`. Exactly: torch `F.interpolate(hr,
    scale_factor=1/scale, mode="bicubic", align_corners=False, antialias=True)` (Keys cubic, a = -0.75,
    kernel stretched by `scale` as MATLAB's imresize does), then clamped to [0, 1] and rounded to
    multiples of 1/255 as an 8-bit image file would store it.
    """
    lr = F.interpolate(hr, scale_factor=1.0 / scale, mode="bicubic", align_corners=False, antialias=True)
    return torch.round(lr.clamp(0, 1) * 255) / 255


def bicubic_up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic baseline: `F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)`,
    clamped to [0, 1]. (N, C, h, w) -> (N, C, scale*h, scale*w)."""
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


@functools.lru_cache(maxsize=None)
def sr_pair(name: str, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lr, hr) of one photo: hr (1, 3, H, W) cropped at the bottom/right to multiples of `scale`,
    lr = `bicubic_down(hr, scale)`, both RGB in [0, 1]."""
    img = load_photo(name)
    h, w = (img.shape[0] // scale) * scale, (img.shape[1] // scale) * scale
    hr = to_tensor(img[:h, :w])
    return bicubic_down(hr, scale), hr


def normalise(img: np.ndarray, spread: float = 0.2, min_std: float = 0.01) -> np.ndarray:
    """`img` (H, W, 3) with each channel's mean moved to 0.5 and the deviations divided by their common
    standard deviation (over all channels, at least `min_std`) and multiplied by `spread`, clipped to [0, 1].

    Invariant to `a * img + c` for a scalar a > 0 and a colour c (while the standard deviation stays above
    `min_std`): the invariance of a network that starts with a convolution and an instance norm, such as
    CycleGAN's generators, so such a network can learn a target made from it.
    """
    img = img.astype(np.float64)
    centred = img - img.mean(axis=(0, 1), keepdims=True)
    return np.clip(0.5 + spread * centred / max(centred.std(), min_std), 0.0, 1.0)


def random_crops(pairs, batch: int, size: int, scale: int, rng: np.random.Generator):
    """A batch of aligned random crops with random flips and 90° turns.

    pairs: list of (a, b) tensors (1, C, h, w) and (1, C', scale*h, scale*w). Returns (A, B) with
    A (batch, C, size, size) and B (batch, C', scale*size, scale*size). Photos are drawn with weights
    proportional to their area (photos smaller than `size` are skipped); `rng` fixes every choice.
    """
    areas = np.array([a.shape[-2] * a.shape[-1] if min(a.shape[-2:]) >= size else 0 for a, _ in pairs],
                     dtype=np.float64)
    if not areas.any():
        raise ValueError(f"no photo is at least {size}×{size} pixels")
    picks = rng.choice(len(pairs), size=batch, p=areas / areas.sum())
    xs, ys = [], []
    for k in picks:
        a, b = pairs[k]
        top = int(rng.integers(0, a.shape[-2] - size + 1))
        left = int(rng.integers(0, a.shape[-1] - size + 1))
        pa = a[0, :, top:top + size, left:left + size]
        pb = b[0, :, scale * top:scale * (top + size), scale * left:scale * (left + size)]
        turns, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        pa, pb = (torch.rot90(p, turns, dims=(1, 2)) for p in (pa, pb))
        if flip:
            pa, pb = pa.flip(-1), pb.flip(-1)
        xs.append(pa)
        ys.append(pb)
    return torch.stack(xs), torch.stack(ys)


@functools.lru_cache(maxsize=None)
def digits_split(test_fraction: float = 0.25, seed: int = 0):
    """scikit-learn's bundled digits as ((x_train, y_train), (x_test, y_test)).

    x: (N, 1, 32, 32) float32 in [0, 1] (the 8x8 images, 0..16 divided by 16, upsampled 4x bilinearly
    with align_corners=False); y: (N,) int64. The split is `train_test_split(test_size=test_fraction,
    random_state=seed, stratify=labels)`: 1347 train / 450 test images by default.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.from_numpy(data.target.astype(np.int64))
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=data.target)
    return (x[train], y[train]), (x[test], y[test])


@functools.lru_cache(maxsize=None)
def digits_8x8(test_fraction: float = 0.25, seed: int = 0):
    """The same split as `digits_split`, before upsampling: ((x_train, y_train), (x_test, y_test)) with x
    (N, 1, 8, 8) float32 in [0, 1] (0..16 divided by 16). Bilinear 4x upsampling gives `digits_split` exactly."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    y = torch.from_numpy(data.target.astype(np.int64))
    train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                   stratify=data.target)
    return (x[train], y[train]), (x[test], y[test])


#: Fraction of the digits training images held out as a validation set when training settings are chosen
#: (`Digits(validation=True)` trains on the rest; the test split is never used to choose anything).
DIGITS_VALIDATION_FRACTION = 0.2


@functools.lru_cache(maxsize=None)
def digits_validation_split(fraction: float = DIGITS_VALIDATION_FRACTION, seed: int = 0):
    """The 8x8 training images of `digits_8x8` split again into ((x_fit, y_fit), (x_val, y_val)), stratified,
    `random_state=seed`; the test split is not touched."""
    from sklearn.model_selection import train_test_split

    (x, y), _ = digits_8x8()
    fit, val = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y.numpy())
    return (x[fit], y[fit]), (x[val], y[val])
