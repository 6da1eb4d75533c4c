"""What users share says nothing about the machine that made it, and logs stay short.

A bundle archive (site, README.txt and stores) built from a photo and a weight file in folders of their own, the
demo site with its stores, and a classify report with its cache are searched for the build folder, the checkout,
the home folder, the system's temporary folder, the host name and scheduler addresses. The demo bundle, run as
`make demo` runs it but with its output captured (not a terminal), writes few lines: at most one per 10 % of each
stage plus its first and last, and no carriage-return updates.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from pipeline.models import build
from pipeline.progress import LOG_STEPS

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
#: Runs of base64 at least this long are PNG payloads of sprite sheets: random text, skipped by the search.
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{200,}")
#: A progress line in a log: "<stage>: started, …", "<stage>: n/N unit (p %), …", "<stage>: done, …".
PROGRESS_LINE = re.compile(r"^(?P<stage>.+?): (started, |done, |\d+/\d+ )")


def linterp(*args, cwd) -> subprocess.CompletedProcess:
    """`linterp ARGS` from this checkout in a subprocess, output captured (pipes: not a terminal)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def needles(build_folder: Path) -> dict[str, bytes]:
    """What must not appear: where things were built, the checkout, home, temp, the host, addresses."""
    found = {"build folder": str(build_folder), "checkout": str(ROOT), "home folder": str(Path.home()) + os.sep,
             "temporary folder": tempfile.gettempdir().rstrip(os.sep) + os.sep, "scheduler address": "tcp://"}
    host = socket.gethostname()
    if len(host) >= 4:  # shorter names ("vm") occur in ordinary words and data
        found["host name"] = host
    return {what: text.encode() for what, text in found.items()}


def leaks(files: dict[str, bytes], build_folder: Path) -> list[str]:
    """'<file>: <what>' for each needle found in the files (name -> bytes), base64 payloads aside."""
    out = []
    for name, data in files.items():
        data = BASE64_RUN.sub(b"", data)
        out += [f"{name}: {what}" for what, needle in needles(build_folder).items() if needle in data]
    return out


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`linterp bundle demo` (all four models, project weights from the checkout) on a 16×16 crop."""
    build_folder = tmp_path_factory.mktemp("demo build")
    done = linterp("bundle", "demo", "--crop", "40,32,16,16", "--out", "demo", cwd=build_folder)
    return build_folder, done


def test_demo_log_is_short_and_has_no_bar_updates(demo):
    _, done = demo
    log = done.stdout + done.stderr
    lines = log.splitlines()
    assert "\r" not in log and "\x1b[" not in log  # no redrawn bars, no terminal control codes
    assert len(lines) <= 200, len(lines)
    stages = Counter(m["stage"] for m in map(PROGRESS_LINE.match, lines) if m)
    for what in ("compute", "svd"):
        assert sum(s.startswith(what + " ") for s in stages) == 4, stages  # one stage per model
    assert "export site" in stages
    assert max(stages.values()) <= LOG_STEPS + 2, stages  # start, one per 10 %, done
    assert all(re.search(r"done, \d+ \S+ in \d+\.\d s$", line) for line in lines if ": done, " in line)


def test_demo_site_and_stores_hold_no_machine_paths(demo):
    build_folder, _ = demo
    files = folder_files(build_folder / "demo")
    assert "site/data/manifest.js" in files and "stores/edsr-small-x4.zarr/zarr.json" in files
    assert leaks(files, build_folder) == []


@pytest.fixture(scope="module")
def photo_bundle(tmp_path_factory):
    """EDSR4x archive with its store, from a photo and a weight file in folders you never see."""
    root = tmp_path_factory.mktemp("portable")
    (root / "My Photos").mkdir()
    (root / "weights from a colleague").mkdir()
    (root / "build here").mkdir()
    photo = root / "My Photos" / "beach day.png"
    iio.imwrite(photo, np.random.default_rng(7).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    weights = root / "weights from a colleague" / "edsr_baseline_x4-mine.pt"
    torch.save(build("edsr-baseline-x4", "random").state_dict(), weights)
    build_folder = root / "build here"
    linterp("bundle", "EDSR4x", "--image", photo, "--crop", "2,3,4,4", "--weights", weights, "--store",
            "--out", build_folder / "dist" / "EDSR4x.zip", cwd=build_folder)
    return root, build_folder / "dist" / "EDSR4x.zip"


def test_bundle_archive_holds_no_machine_paths(photo_bundle):
    root, archive = photo_bundle
    with zipfile.ZipFile(archive) as zf:
        files = {name: zf.read(name) for name in zf.namelist()}
    assert "EDSR4x/README.txt" in files and "EDSR4x/store/edsr-baseline-x4.zarr/zarr.json" in files
    assert leaks(files, root) == []
    readme = files["EDSR4x/README.txt"].decode()
    # the files are still named, by their base names and digests
    assert "Image: beach day.png  sha256 " in readme and "weights edsr_baseline_x4-mine.pt  sha256 " in readme
    assert "--image 'beach day.png'" in readme and "Platform: " in readme
    assert "My Photos" not in readme and "weights from a colleague" not in readme


def test_classify_report_and_cache_hold_no_machine_paths(tmp_path):
    (tmp_path / "scans").mkdir()
    for i in range(2):
        iio.imwrite(tmp_path / "scans" / f"digit {i}.png",
                    np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8))
    (tmp_path / "weights").mkdir()
    weights = tmp_path / "weights" / "digits-vgg.pt"
    weights.write_bytes((ROOT / "pipeline" / "models" / "weights" / "digits-vgg.pt").read_bytes())
    linterp("classify", "--model", "digits-vgg", "--weights", weights, "--images", tmp_path / "scans",
            "--figures", "1", "--out", "report", cwd=tmp_path)
    files = folder_files(tmp_path / "report")
    assert "index.html" in files and any(name.startswith("images/") and name.endswith(".json") for name in files)
    assert leaks(files, tmp_path) == []
