"""Held-out quality of the offline defaults, in the units the model cards quote.

- super-resolution: PSNR on Y in [0, 1] (peak 1), `SR_BORDER` = 8 border pixels excluded, per held-out photo,
  against bicubic upscaling of the same LR image (`data.bicubic_up`);
- image-to-image: mean L1 to the style targets (`styles`), against the identity's and the best affine colour
  map's of the normalised photo (`best_affine_colour`), in [-1, 1] units;
- digits: accuracy on the fixed test split, as tensors and rendered as image files many ways (`digit_files`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pipeline.progress import iterate
from pipeline.training import data, render
from pipeline.training.tasks import Digits, SuperResolution, Translation

#: Pixels cut off each side of a super-resolved image before its PSNR is measured.
SR_BORDER = 8


@dataclass
class Report:
    """metrics: name -> value; lines: the human-readable table `linterp evaluate` prints."""

    metrics: dict = field(default_factory=dict)
    lines: list = field(default_factory=list)


def psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> float:
    """PSNR in dB of two (1, 1, H, W) images in [0, 1], `border` pixels cut off each side."""
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()


@torch.no_grad()
def evaluate_sr(model: nn.Module, task: SuperResolution, photos=data.HELD_OUT_PHOTOS) -> Report:
    """PSNR_Y of model and bicubic on each photo; metrics 'psnr', 'psnr_bicubic', 'gain' are means in dB."""
    rep = Report()
    width = max(len("photo"), *(len(name) for name in photos))
    rep.lines.append(f"{'photo':<{width}} {'size (HR)':>11} {'model dB':>9} {'bicubic dB':>10} {'gain dB':>8}")
    ours, base = [], []
    for name in photos:
        lr, hr = data.sr_pair(name, task.scale)
        y_hr = data.luma(hr)
        y_model = task.to_y(model(task.to_model(lr)))
        y_bic = data.bicubic_up(data.luma(lr), task.scale)
        ours.append(psnr(y_model, y_hr, SR_BORDER))
        base.append(psnr(y_bic, y_hr, SR_BORDER))
        size = f"{hr.shape[-2]}x{hr.shape[-1]}"
        rep.lines.append(f"{name:<{width}} {size:>11} {ours[-1]:9.3f} {base[-1]:10.3f} {ours[-1] - base[-1]:+8.3f}")
    m, b = sum(ours) / len(ours), sum(base) / len(base)
    rep.lines.append(f"{'mean':<{width}} {'':>11} {m:9.3f} {b:10.3f} {m - b:+8.3f}")
    rep.metrics.update(psnr=m, psnr_bicubic=b, gain=m - b)
    return rep


def best_affine_colour(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The affine colour map of ``source`` (1, 3, H, W) closest to ``target`` in the least-squares sense:
    ``A·source + b`` per pixel with one 3×3 matrix A and one colour b for the whole image, clipped to [-1, 1]."""
    x = source[0].reshape(3, -1).double()
    design = torch.cat([x, torch.ones(1, x.shape[1], dtype=x.dtype)]).T
    coef = torch.linalg.lstsq(design, target[0].reshape(3, -1).double().T).solution
    return (design @ coef).T.reshape(source.shape).clamp(-1, 1).to(source.dtype)


@torch.no_grad()
def evaluate_translation(model: nn.Module, task: Translation, photos=data.HELD_OUT_PHOTOS) -> Report:
    """L1 to the style target of the model and of two baselines, per photo (cropped to multiples of 4):
    the identity, and the best affine colour map of the normalised photo (`data.normalise`), fitted to each
    photo's own target (an oracle: the best any map without spatial processing and with global statistics
    could do). Metrics 'l1', 'l1_identity', 'l1_colour' (pixel-weighted means, [-1, 1] units) and
    'reduction' = 1 - l1 / min(l1_identity, l1_colour): how far below the better baseline the model is."""
    rep = Report()
    rep.lines.append(f"{'photo':<36} {'size':>9} {'model L1':>9} {'identity':>9} {'colour map':>10} {'reduction':>9}")
    sums = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for name in photos:
        img = data.load_photo(name)
        photo = data.to_tensor(img[: img.shape[0] // 4 * 4, : img.shape[1] // 4 * 4])
        x, y = task.to_model(photo), task.to_model(task.target(photo))
        z = task.to_model(data.to_tensor(data.normalise(photo[0].permute(1, 2, 0).numpy())).float())
        errs = torch.tensor([(model(x) - y).abs().mean().item(), (x - y).abs().mean().item(),
                             (best_affine_colour(z, y) - y).abs().mean().item()], dtype=torch.float64)
        n = x.shape[-2] * x.shape[-1]
        sums, pixels = sums + errs * n, pixels + n
        rep.lines.append(f"{name:<36} {x.shape[-2]:>4}x{x.shape[-1]:<4} {errs[0]:9.4f} {errs[1]:9.4f} {errs[2]:10.4f} "
                         f"{1 - errs[0] / min(errs[1], errs[2]):9.1%}")
    err, ide, col = (sums / pixels).tolist()
    rep.lines.append(f"{'all':<36} {'':>9} {err:9.4f} {ide:9.4f} {col:10.4f} {1 - err / min(ide, col):9.1%}")
    rep.metrics.update(l1=err, l1_identity=ide, l1_colour=col, reduction=1 - err / min(ide, col))
    return rep
#: Shifts (pixels, each axis) of the 32×32 renderings of `evaluate_digits`.
EVAL_SHIFTS = tuple(range(-2, 3))
#: Ink colour (RGB in [0, 1]) of the dark-on-white rendering: dark blue ink on white paper.
INK = (0.1, 0.1, 0.45)


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> uint8 (N, H, W, C), as an image file stores it."""
    return torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def digit_files(x8: torch.Tensor):
    """The held-out renderings of digits (N, 1, 8, 8) as image files: yields (group, name, uint8 (N, H, W, C)).

    Groups: "32×32 <mode>" for each of `render.MODES`, upsampled 8 → 32 and shifted by every (dy, dx) in
    `EVAL_SHIFTS`² (zero fill); "8×8 file" (the digits as they are); "64×64 bilinear" and "64×64 nearest"
    (upsampled 8 → 64); "64×64 dark on white (RGB)" (the bilinear 64×64 digit as `INK` on white paper).
    """
    for mode in render.MODES:
        up = render.upsample(x8, render.SIDE, mode)
        for dy in EVAL_SHIFTS:
            for dx in EVAL_SHIFTS:
                yield f"32×32 {mode}", f"shift ({dy:+d}, {dx:+d})", _uint8(render.shift(up, dy, dx))
    yield "8×8 file", "", _uint8(x8)
    big = render.upsample(x8, 64, "bilinear")
    yield "64×64 bilinear", "", _uint8(big)
    yield "64×64 nearest", "", _uint8(render.upsample(x8, 64, "nearest"))
    ink = torch.tensor(INK, dtype=big.dtype).view(1, 3, 1, 1)
    yield "64×64 dark on white (RGB)", "", _uint8(1 - big * (1 - ink))


@torch.no_grad()
def file_accuracy(model: nn.Module, files: np.ndarray, labels: torch.Tensor, spec=None, batch: int = 512) -> float:
    """Accuracy on uint8 images (N, H, W, C) taken through `pipeline.preprocess.classifier_inputs` (the
    preprocessing of `linterp run` and `classify`) for `spec` (default: the digits models' spec)."""
    from pipeline.models.registry import spec as model_spec
    from pipeline.preprocess import classifier_inputs

    spec = spec or model_spec("digits-vgg")
    correct = 0
    for start in range(0, len(labels), batch):
        x, _ = classifier_inputs(files[start:start + batch], spec)
        correct += (model(x).argmax(1) == labels[start:start + batch]).sum().item()
    return correct / len(labels)


@torch.no_grad()
def evaluate_digits(model: nn.Module, task: Digits, limit: int | None = None, split: str = "test",
                    progress: bool = True) -> Report:
    """Accuracy on the held-out digits: as the 32×32 tensors of `data.digits_split` (metric 'accuracy'), and
    rendered as image files by `digit_files` and preprocessed as users' files are (one metric per group: the
    mean over its shifts; 'worst' = the lowest accuracy of any single rendering, all shifts included).

    ``split``: "test" (the fixed test split) or "validation" (`data.digits_validation_split`, to choose
    training settings); ``limit``: only its first images.
    """
    if split == "test":
        _, (x8, y) = data.digits_8x8()
    elif split == "validation":
        _, (x8, y) = data.digits_validation_split()
    else:
        raise ValueError(f"split must be 'test' or 'validation', got '{split}'")
    if limit is not None:
        x8, y = x8[:limit], y[:limit]
    x = render.upsample(x8, render.SIDE, "bilinear")  # = digits_split's images for the test split
    correct = (model(x).argmax(1) == y).sum().item()
    rep = Report(metrics={"accuracy": correct / len(y), "n": len(y)})
    rep.lines.append(f"{split} accuracy {correct}/{len(y)} = {correct / len(y):.2%} (32×32 bilinear tensors, "
                     f"as in training data)")
    groups: dict[str, list[tuple[str, float]]] = {}
    renderings = len(render.MODES) * len(EVAL_SHIFTS) ** 2 + 4
    for group, name, files in iterate(digit_files(x8), f"digits as files ({split})", total=renderings,
                                      unit="renderings", enabled=progress):
        groups.setdefault(group, []).append((name, file_accuracy(model, files, y)))
    rep.lines.append(f"{split} digits as image files, preprocessed as `linterp classify --images` does:")
    rep.lines.append(f"  {'rendering':<27} {'accuracy':>9} {'worst':>8}  worst rendering")
    worst = rep.metrics["accuracy"]
    for group, results in groups.items():
        values = [a for _, a in results]
        low_name, low = min(results, key=lambda t: t[1])
        mean = float(np.mean(values))
        rep.metrics[group] = mean
        worst = min(worst, low)
        detail = f"{low:8.2%}  {low_name}" if len(results) > 1 else ""
        rep.lines.append(f"  {group:<27} {mean:9.2%} {detail}")
    rep.metrics["worst"] = worst
    rep.lines.append(f"worst single rendering (all of the above): {worst:.2%}")
    return rep


def evaluate(model: nn.Module, task, photos=data.HELD_OUT_PHOTOS) -> Report:
    """The held-out report of `model` (put in eval mode) on its recipe's task."""
    model.eval()
    if isinstance(task, SuperResolution):
        return evaluate_sr(model, task, photos)
    if isinstance(task, Translation):
        return evaluate_translation(model, task, photos)
    if isinstance(task, Digits):
        return evaluate_digits(model, task)
    raise ValueError(f"no evaluation for task {type(task).__name__}")


def task_for(name: str):
    """The evaluation task of a registry name: its recipe's task for the trained defaults, a
    `SuperResolution` task for any other super-resolution model; ValueError for the rest."""
    from pipeline.models.registry import spec
    from pipeline.training.recipes import RECIPES

    if name in RECIPES:
        return RECIPES[name].task
    model_spec = spec(name)
    if model_spec.task == "sr":
        return SuperResolution(scale=model_spec.scale, channels=model_spec.in_channels,
                               rgb_range=model_spec.value_range[1])
    raise ValueError(f"no held-out evaluation for {name} ({model_spec.task}); evaluate knows super-resolution "
                     f"models and {', '.join(RECIPES)}")


def check(name: str, report: Report) -> list[str]:
    """Lines saying whether `report` meets the recipe's target of `name` and beats the models it must beat
    (each evaluated with its default weights on the same data); empty for names without a recipe."""
    from pipeline.models.registry import build
    from pipeline.training.recipes import RECIPES

    rec = RECIPES.get(name)
    if rec is None or rec.target is None:
        return []
    metric, minimum = rec.target
    value = report.metrics[metric]
    lines = [f"target {metric} >= {minimum:g}: {value:.4g} -> {'met' if value >= minimum else 'NOT met'}"]
    for other in rec.beats:
        try:
            theirs = evaluate(build(other), task_for(other)).metrics
        except ValueError as err:
            lines.append(f"cannot compare with {other}: {str(err).splitlines()[0]}")
            continue
        verdict = "met" if value > theirs[metric] else "NOT met"
        lines.append(f"{metric} above {other}'s ({theirs[metric]:.4g}): {value:.4g} -> {verdict}")
    return lines
