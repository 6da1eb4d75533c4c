"""The model registry: every name linterp knows, what it expects as input, and where its weights come from.

``available()`` lists the ``ModelSpec`` of every name; ``build(name, weights)`` returns the model in eval mode with
its default weights (``weights=None``), a seeded random initialisation (``"random"``) or a file (a path).
"""
from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.models import weights as wts
from pipeline.models.bicubic import Bicubic
from pipeline.models.classifiers import CLASSIFIERS, torchvision_classifier
from pipeline.models.cyclegan import ResnetGenerator
from pipeline.models.digits import DigitsVGG
from pipeline.models.edsr import EDSR
from pipeline.models.pixelshuffle import PixelShuffleNet

#: Folder of the project's trained default weight files, ``<name>.pt`` state dicts.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# ---------------------------------------------------------------------------------------------------------------
#: sha256 of the project's trained default weight files (pipeline/models/weights/<name>.pt).
#: Filled in by the training work when a file is committed; None = no file yet (build(name) then fails clearly).
TRAINED_SHA256: dict[str, str | None] = {
    "pixelshuffle-x4": "b5d6b7e60d5175a9639f69102c6f139f918812217b7ebf9314f005cacffb4d0e",
    "edsr-small-x4": "69e56f9eb0270abe5c8c35cec6ac2a8f3cb2cfd54727e86a37a7848ed0d7bda9",
    "i2i-paint": "330d1f0e20cb729da4c0d3ae54aed4ff9c38c514ffc3add8441658a1df42cfe7",
    "i2i-woodcut": "ac27d2adb9de832dc0df9d007b64080a923c423f6dde82e894ab6d2c60f4258e",
    "i2i-label": "5d48737b623a59e03651f4e2ce3e12ea641ed9f7759ad456bc3218d338abd4a4",
    "digits-vgg": "06f2ed484a9d796cbbd828f97e54b711dbd7340682f2c6460d2be07dd18ed52e",
    "digits-vgg-bn": "9d3af9065c41ee88f1f13c477ee8f282792c2f49bf39e4344b78ddbfe893262c",
}
# ---------------------------------------------------------------------------------------------------------------

#: Value for ``ModelSpec.weights`` when the default weights are the project's file ``WEIGHTS_DIR/<name>.pt``.
PROJECT = "project"
#: Value for ``ModelSpec.weights`` when the model has no parameters at all.
NO_PARAMETERS = "no-parameters"

EDSR_URL = "https://cv.snu.ac.kr/research/EDSR/models/{}"
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/{}.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/{}"
#: scale -> (baseline file, full-model file) of the official EDSR releases.
EDSR_FILES = {2: ("edsr_baseline_x2-1bc95232.pt", "edsr_x2-0edfb8a3.pt"),
              3: ("edsr_baseline_x3-abf2a44e.pt", "edsr_x3-ea3ef2c6.pt"),
              4: ("edsr_baseline_x4-6b446fab.pt", "edsr_x4-4f62e9ef.pt")}
SUPERRES_TUTORIAL_URL = "https://s3.amazonaws.com/pytorch/test_data/export/superres_epoch100-44c6958e.pth"

#: The generators published by scripts/download_cyclegan_model.sh (one direction each).
CYCLEGAN_NAMES = (
    "apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite", "horse2zebra", "zebra2horse",
    "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh", "sat2map", "map2sat",
    "cityscapes_photo2label", "cityscapes_label2photo", "facades_photo2label", "facades_label2photo",
    "iphone2dslr_flower",
)


class UnknownModelError(ValueError):
    """A model name that the registry does not know; the message is one line with close matches."""


@dataclass(frozen=True)
class ModelSpec:
    """What a registry name is and what it expects.

    ``colour``: 'rgb' (3 channels), 'y' (the Y of JFIF YCbCr, 1 channel) or 'gray' (1 channel).
    ``value_range``: the (lo, hi) that pixel values 0 and 255 map to, for the input and for image outputs.
    ``min_size`` / ``multiple`` / ``fixed_size``: constraints on the input height and width in pixels.
    ``weights``: default weights source: an official URL, ``PROJECT``, ``NO_PARAMETERS``, or None (none published).
    ``preprocess``: how a classifier's image files become inputs (``pipeline.preprocess``): 'photo' (resize and
    centre crop) or 'drawing' (a light figure on a dark plain background: polarity, letterbox fit, levels).
    """

    name: str
    task: str
    scale: int
    colour: str
    value_range: tuple[float, float]
    description: str
    factory: Callable[[], nn.Module] = field(repr=False, compare=False)
    weights: str | None = None
    min_size: int = 1
    multiple: int = 1
    fixed_size: tuple[int, int] | None = None
    preprocess: str = "photo"

    @property
    def in_channels(self) -> int:
        return 3 if self.colour == "rgb" else 1

    @property
    def weights_source(self) -> str:
        """The default weights in words, for tables."""
        if self.weights == PROJECT:
            return f"project: pipeline/models/weights/{self.name}.pt"
        if self.weights == NO_PARAMETERS:
            return "none needed (no parameters)"
        return self.weights or "none published (use --weights)"


def _specs() -> list[ModelSpec]:
    specs: list[ModelSpec] = []
    for s in (2, 3, 4):
        specs.append(ModelSpec(f"bicubic-x{s}", "sr", s, "rgb", (0.0, 1.0), f"bicubic upscaling ×{s} (torch, a=−0.75)",
                               functools.partial(Bicubic, s), weights=NO_PARAMETERS))
    for s in (2, 3, 4):
        default = {3: SUPERRES_TUTORIAL_URL, 4: PROJECT}.get(s)
        specs.append(ModelSpec(f"pixelshuffle-x{s}", "sr", s, "y", (0.0, 1.0),
                               f"PyTorch example sub-pixel net ×{s} on Y", functools.partial(PixelShuffleNet, s),
                               weights=default))
    for s in (2, 3, 4):
        baseline, full = EDSR_FILES[s]
        specs.append(ModelSpec(f"edsr-baseline-x{s}", "sr", s, "rgb", (0.0, 255.0),
                               f"EDSR baseline ×{s} (16 blocks, 64 features), RGB 0..255",
                               functools.partial(EDSR, s, 16, 64, 1.0), weights=EDSR_URL.format(baseline)))
        specs.append(ModelSpec(f"edsr-x{s}", "sr", s, "rgb", (0.0, 255.0),
                               f"EDSR ×{s} (32 blocks, 256 features, res_scale 0.1), RGB 0..255",
                               functools.partial(EDSR, s, 32, 256, 0.1), weights=EDSR_URL.format(full)))
    specs.append(ModelSpec("edsr-small-x4", "sr", 4, "rgb", (0.0, 255.0),
                           "EDSR ×4 (8 blocks, 32 features) trained by linterp, RGB 0..255",
                           functools.partial(EDSR, 4, 8, 32, 1.0), weights=PROJECT))
    for name in CYCLEGAN_NAMES:
        specs.append(ModelSpec(f"cyclegan-{name}", "i2i", 1, "rgb", (-1.0, 1.0),
                               f"CycleGAN ResNet-9 generator {name}, RGB in [−1, 1]", ResnetGenerator,
                               weights=CYCLEGAN_URL.format(name), multiple=4, min_size=8))
    for style, bundle in (("paint", "VanGogh"), ("woodcut", "Ukiyoe"), ("label", "Photo2Label")):
        specs.append(ModelSpec(f"i2i-{style}", "i2i", 1, "rgb", (-1.0, 1.0),
                               f"CycleGAN ResNet generator (ngf 24, 6 blocks) trained by linterp on photo → {style}, "
                               f"stand-in for CycleGAN-{bundle}, RGB in [−1, 1]",
                               functools.partial(ResnetGenerator, 3, 3, 24, 6), weights=PROJECT, multiple=4,
                               min_size=8))
    for name, (file, side, smallest) in CLASSIFIERS.items():
        specs.append(ModelSpec(name, "classify", 1, "rgb", (0.0, 1.0),
                               f"torchvision {name} (ImageNet-1k, {side}×{side} recommended), RGB in [0, 1]",
                               functools.partial(torchvision_classifier, name), weights=TORCHVISION_URL.format(file),
                               min_size=smallest))
    for name, bn in (("digits-vgg", False), ("digits-vgg-bn", True)):
        specs.append(ModelSpec(name, "classify", 1, "gray", (0.0, 1.0),
                               f"small VGG{' with batch norm' if bn else ''} for scikit-learn digits, 32×32 gray in "
                               f"[0, 1], trained by linterp", functools.partial(DigitsVGG, bn), weights=PROJECT,
                               fixed_size=(32, 32), preprocess="drawing"))
    return specs


@functools.lru_cache(maxsize=1)
def _table() -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in _specs()}


def available() -> list[ModelSpec]:
    """Every registry name's spec, in table order (super-resolution, image-to-image, classifiers)."""
    return list(_table().values())


def spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name raises ``UnknownModelError`` naming close matches."""
    table = _table()
    if name in table:
        return table[name]
    close = difflib.get_close_matches(name, table, n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `linterp models` lists them"
    if name.endswith(".py") or "/" in name or os.sep in name:  # a user's file without its factory
        hint = f"; for your own model name its factory too: {name}:FACTORY (a function that returns the module)"
    raise UnknownModelError(f"unknown model '{name}'{hint}")


def build(name: str, weights: str | Path | None = None, trust_pickle: bool = False) -> nn.Module:
    """The model ``name`` in eval mode with its weights.

    ``weights``: None = the default (official file, downloaded into the cache, or the project's trained file);
    ``"random"`` = the family's own initialisation from the fixed seed 0; otherwise the path of a weight file.
    """
    model_spec = spec(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_spec.factory()
    model.eval()
    if weights is not None and str(weights) == "random":
        return model
    if model_spec.weights == NO_PARAMETERS:
        if weights is not None:
            raise wts.WeightsError(f"{name} has no parameters and takes no weights file")
        return model
    if weights is None:
        path = default_weights_path(model_spec)
        origin = f"default weights of {name} ({path.name})"
    else:
        path, origin = Path(weights), f"weights {weights}"
    return wts.load_weights(model, wts.read_state_dict(path, trust_pickle), origin)


def default_weights_path(model_spec: ModelSpec) -> Path:
    """The local file of a spec's default weights: the project's file, or the official file (fetched if needed)."""
    if model_spec.weights is None:
        raise wts.WeightsError(f"{model_spec.name} has no published weights; pass --weights PATH "
                               f"(or --weights random)")
    if model_spec.weights != PROJECT:
        return wts.fetch(model_spec.weights)
    path = WEIGHTS_DIR / f"{model_spec.name}.pt"
    if not path.is_file():
        raise wts.WeightsError(f"the default weights of {model_spec.name} ({path}) are not in this installation; "
                               f"pass --weights PATH (`linterp train {model_spec.name}` writes "
                               f"out/train/{model_spec.name}.pt)")
    wts.verify_sha256(path, TRAINED_SHA256.get(model_spec.name), str(path))
    return path


def class_names(name: str) -> list[str]:
    """The class labels of a classifier's outputs, in output order (ImageNet categories or the digits 0–9)."""
    model_spec = spec(name)
    if model_spec.task != "classify":
        raise ValueError(f"{name} is not a classifier")
    if model_spec.name.startswith("digits-"):
        return [str(d) for d in range(10)]
    import torchvision

    return list(torchvision.models.get_model_weights(name).DEFAULT.meta["categories"])
