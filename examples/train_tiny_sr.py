"""Train your own small network for a minute, then look inside it with linterp in three commands.

    python examples/train_tiny_sr.py                     # ≈1 min of training on scikit-image's photos
    python examples/train_tiny_sr.py --seconds 300 --out out/tiny_sr

The network is examples/tiny_sr.py (a file of its own: residual blocks with LeakyReLU, a pixel shuffle and a
global bilinear skip). Training: random 48×48 crops of scikit-image's sample photos (the astronaut, linterp's
default image, is held out), downscaled ×2 (bicubic, antialiased), L1 loss, Adam. The state dict goes to
OUT/tiny_sr.pt, and then the script runs, printing each command as you would type it:

    linterp compute --model examples/tiny_sr.py:make --weights OUT/tiny_sr.pt --crop 16,24,32,32 --out OUT/tiny_sr.zarr
    linterp verify OUT/tiny_sr.zarr --model examples/tiny_sr.py --weights OUT/tiny_sr.pt
    linterp export OUT/tiny_sr.zarr --out OUT/site

Open OUT/site/index.html: hover the input to see what one pixel does to the output (a column of F), the output
to see which input pixels make one output pixel (a row).
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data

from tiny_sr import make  # python puts this script's folder on sys.path

HERE = Path(__file__).resolve().parent
#: scikit-image's colour photos (RGB, or grey repeated to RGB); the astronaut is held out for linterp.
PHOTOS = ("chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "camera", "coins", "brick")
SCALE = 2


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample as a float tensor (3, H, W) in [0, 1]."""
    img = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(img[:, :, :3].transpose(2, 0, 1)))


def batch(photos: list[torch.Tensor], rng: np.random.Generator, size: int = 48, n: int = 16):
    """(low-resolution (n, 3, size/2, size/2), high-resolution (n, 3, size, size)) random crops."""
    crops = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        y, x = rng.integers(p.shape[1] - size), rng.integers(p.shape[2] - size)
        crops.append(p[:, y:y + size, x:x + size])
    hr = torch.stack(crops)
    lr = F.interpolate(hr, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
    return lr.clamp(0, 1), hr


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a.clamp(0, 1), b)))


def train(seconds: float, seed: int = 0) -> torch.nn.Module:
    """TinySR trained for ``seconds`` of wall time; prints the held-out PSNR against bilinear upscaling."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    photos = [photo(n) for n in PHOTOS]
    model = make(scale=SCALE)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, steps = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        lr, hr = batch(photos, rng)
        loss = F.l1_loss(model(lr), hr)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    model.eval()
    face = photo("astronaut")[:, 30:222, 150:342][None]  # held out
    small = F.interpolate(face, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
    with torch.no_grad():
        ours = psnr(model(small), face)
    bilinear = psnr(F.interpolate(small, scale_factor=SCALE, mode="bilinear", align_corners=False), face)
    print(f"trained {steps} steps in {time.perf_counter() - start:.0f} s: held-out PSNR {ours:.2f} dB "
          f"(bilinear {bilinear:.2f} dB)")
    return model


def linterp(*args: str) -> None:
    """Run one linterp command (printed as you would type it) with this Python."""
    print("$ linterp " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="training time (default 60)")
    parser.add_argument("--out", type=Path, default=Path("out/tiny_sr"), help="folder for weights, store and site")
    parser.add_argument("--crop", default="16,24,32,32", help="X,Y,W,H of the default image (default: an eye)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    weights, store, site = args.out / "tiny_sr.pt", args.out / "tiny_sr.zarr", args.out / "site"
    torch.save(train(args.seconds).state_dict(), weights)
    for old in (store, site):  # new weights: the store and site of an earlier run no longer apply
        shutil.rmtree(old, ignore_errors=True)
    quiet = ["--quiet"] if args.quiet else []
    spec = os.path.relpath(HERE / "tiny_sr.py")
    linterp("compute", "--model", f"{spec}:make", "--weights", str(weights), "--crop", args.crop, "--out", str(store),
            *quiet)
    linterp("verify", str(store), "--model", spec, "--weights", str(weights), *quiet)
    linterp("export", str(store), "--out", str(site), *(["--no-progress"] if args.quiet else []))
    print(f"open {site / 'index.html'}")


if __name__ == "__main__":
    main()
