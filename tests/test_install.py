"""linterp as others install it: a wheel built from the sources, installed into a fresh virtual environment, run
from a folder outside the checkout. Offline: the wheel is built without build isolation (setuptools of this
environment) and the fresh environment reuses this one's installed dependencies through a .pth file."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[1]
#: What a wheel is built from (the sdist's content; tests, docs and benchmarks are not part of the package).
SOURCES = ("pyproject.toml", "README.md", "pipeline", "site_template")
TEMPLATE = ("index.html", "viewer.js", "viewer.css")


def run(args, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, args))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def clean_env() -> dict:
    """This environment without the variables that would put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return env | {"PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, wheel): linterp built as a wheel and installed into a fresh venv that borrows the dependencies."""
    pytest.importorskip("setuptools", reason="the wheel is built offline with this environment's setuptools "
                                             "(a test extra of linterp)")
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copyfile(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--wheel-dir", root / "wheels", "./src"], cwd=root, env=clean_env())
    (wheel,) = (root / "wheels").glob("linterp-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel],
        cwd=root, env=clean_env())
    # after the install (so that pip never sees this environment's own linterp): borrow the dependencies
    target = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root).stdout
    borrowed = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (Path(target.strip()) / "_linterp_test_deps.pth").write_text("\n".join(borrowed) + "\n")
    return venv, wheel


def test_wheel_holds_every_module_and_the_viewer_template(installed):
    _, wheel = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").rglob("*.py")}
    assert modules - names == set(), "add the package to [tool.setuptools] packages in pyproject.toml"
    assert {f"pipeline/site_template/{n}" for n in TEMPLATE} <= names
    weights = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline" / "models" / "weights").glob("*.pt")}
    assert weights and weights <= names
    assert not any(n.startswith(("site_template/", "tests/", "data/")) for n in names)  # nothing at the top level


def test_installed_linterp_runs_outside_the_checkout(installed, tmp_path):
    """compute (project weights from package data), svd, verify (when the command exists) and export (the viewer
    template from package data) from the installed wheel, in a folder that is not the checkout."""
    venv, _ = installed
    env, bin_ = clean_env(), venv / "bin"
    where = run([bin_ / "python", "-c", "import pipeline; print(pipeline.__file__)"], cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel, not the checkout
    linterp = bin_ / "linterp"
    run([linterp, "compute", "--model", "pixelshuffle-x4", "--crop", "40,40,8,8", "--out", "face.zarr",
         "--workers", "1", "--quiet"], cwd=tmp_path, env=env)
    svd = run([linterp, "svd", "face.zarr", "--k", "2", "--quiet"], cwd=tmp_path, env=env)
    assert "wrote svd" in svd.stdout
    if "verify" in COMMANDS:
        run([linterp, "verify", "face.zarr"], cwd=tmp_path, env=env)
    run([linterp, "export", "face.zarr", "--out", "site", "--no-progress"], cwd=tmp_path, env=env)
    for name in TEMPLATE:
        assert (tmp_path / "site" / name).read_bytes() == (ROOT / "site_template" / name).read_bytes()
    assert (tmp_path / "site" / "data" / "pixelshuffle-x4" / "img_v0_0_0.js").is_file()  # an eigen-input tile
