"""Your own model: `--model FILE.py:FACTORY` / `package.module:FACTORY`, the Python API and the worked example.

The example network (examples/tiny_sr.py: residual blocks with LeakyReLU, a pixel shuffle, a global bilinear
skip) goes through compute on threads, processes and a distributed cluster, the API with the spec and with the
module object (identical stores), svd, export, video and the browser; stored columns equal the Jacobian of the
network (torch.func.jvp: it is piecewise linear). Model files the project never saw (a Y-channel ×3 SR with a
transposed convolution, a small U-Net image-to-image in a package, a classifier) are inferred and computed; a
changed model file is refused in one line; every bad spec gives one line and no traceback.
"""
from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pipeline
from pipeline.cli import main
from pipeline.models.weights import file_sha256
from pipeline.store import FileRef, open_store

pytestmark = pytest.mark.timeout(600)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EXAMPLE = EXAMPLES / "tiny_sr.py"
#: a small TinySR (8 features, 1 block) on a 12×12 crop of the default image: F is (3, 24, 24, 3, 12, 12)
ARGS = {"features": 8, "blocks": 1}
CROP = "20,30,12,12"


def cli(*args, expect: int = 0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == expect, result.output
    return result


def one_line_error(result, message: str) -> None:
    """Exit 1, one line `Error: …` holding ``message``, no traceback."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def example_model():
    """The example network as a user builds it in a notebook (imported from its folder)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import tiny_sr
    finally:
        sys.path.remove(str(EXAMPLES))
    return tiny_sr.make(**ARGS)


def columns_by_jvp(model, x0: np.ndarray, pixels) -> np.ndarray:
    """Columns F[..., c, y, x] as Jacobian-vector products of the model at x0: (len(pixels), C_out, H_out, W_out)."""
    x = torch.from_numpy(x0)[None]
    out = []
    for c, y, xx in pixels:
        v = torch.zeros_like(x)
        v[0, c, y, xx] = 1
        out.append(torch.func.jvp(model, (x,), (v,))[1][0].detach().numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Weights of the small example network (the factory's parameters, perturbed), in a folder of their own."""
    root = tmp_path_factory.mktemp("user")
    (root / "runs").mkdir()
    model = example_model()
    gen = torch.Generator().manual_seed(7)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
    weights = root / "runs" / "tiny-run3.pt"
    torch.save(state, weights)
    return root, weights


def example_args(weights):
    return ["--model", f"{EXAMPLE}:make", "--model-arg", "features=8", "--model-arg", "blocks=1",
            "--weights", weights, "--crop", CROP]


@pytest.fixture(scope="module")
def example_store(trained):
    """`linterp compute` of the example network on threads (2 workers, 9 tiles)."""
    root, weights = trained
    out = root / "tiny.zarr"
    cli("compute", *example_args(weights), "--out", out, "--tile", "4", "--workers", "2", "--quiet")
    return open_store(out, require_complete=True)


def test_example_store_records_the_spec_and_equals_the_jacobian(trained, example_store):
    root, weights = trained
    store = example_store
    attrs = store.attrs
    assert attrs.model == "tiny_sr.py:make"
    assert (attrs.task, attrs.scale, attrs.colour, attrs.value_range) == ("sr", 2, "rgb", [0.0, 1.0])
    assert attrs.model_spec["kind"] == "file" and attrs.model_spec["factory"] == "make"
    assert attrs.model_spec["file"] == {"name": "tiny_sr.py", "sha256": file_sha256(EXAMPLE)}
    assert attrs.model_spec["args"] == ARGS
    assert attrs.weights == FileRef("tiny-run3.pt", file_sha256(weights))
    assert attrs.identity["model_sha256"] == file_sha256(EXAMPLE)
    text = (store.path / "zarr.json").read_text()
    assert str(root) not in text and str(EXAMPLES) not in text and "runs/" not in text  # names, never paths
    assert store.F.shape == (3, 24, 24, 3, 12, 12)
    # the network rebuilt by hand: its output is y0 and its Jacobian is F (LeakyReLU, pixel shuffle and bilinear
    # upscaling are piecewise linear)
    model = example_model()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    with torch.no_grad():
        y0 = model(torch.from_numpy(store.x0)[None])[0].numpy()
    assert np.abs(y0 - store.y0).max() <= 1e-6
    pixels = [(0, 0, 0), (1, 5, 7), (2, 11, 11), (0, 6, 2)]
    want = columns_by_jvp(model, store.x0, pixels)
    got = np.stack([store.column(*p) for p in pixels])
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    F = store.F[...].reshape(3 * 24 * 24, -1)
    recon = F @ store.x0.reshape(-1) + store.residual.reshape(-1)
    assert np.abs(recon - store.y0.reshape(-1)).max() <= 1e-5 * np.abs(store.y0).max()


def test_processes_cluster_and_api_give_identical_stores(trained, example_store, tmp_path):
    from distributed import LocalCluster

    _, weights = trained
    ref = example_store
    common = dict(crop=CROP, tile=4, progress=False, device="cpu")
    module = example_model()
    module.load_state_dict(torch.load(weights, weights_only=True))
    module.train()  # the user's module is left as it is: linterp works on copies in eval mode
    by_object = pipeline.compute_store(module, None, tmp_path / "object.zarr", workers=2, **common)
    assert module.training
    by_processes = pipeline.compute_store(f"{EXAMPLE}:make", None, tmp_path / "procs.zarr", weights=weights,
                                          model_args=ARGS, scheduler="processes", workers=1, **common)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        by_cluster = pipeline.compute_store(f"{EXAMPLE}:make", None, tmp_path / "dist.zarr", weights=weights,
                                            model_args=ARGS, scheduler=cluster.scheduler_address, **common)
        # the module object goes to the cluster's process pickled by value (its class's code with it)
        by_object_remote = pipeline.compute_store(module, None, tmp_path / "object-remote.zarr",
                                                  scheduler=cluster.scheduler_address, **common)
    for store in (by_processes, by_cluster, by_object, by_object_remote):
        assert store.complete
        assert np.array_equal(store.F[...], ref.F[...])
        assert np.array_equal(store.x0, ref.x0) and np.array_equal(store.y0, ref.y0)
        assert np.array_equal(store.residual, ref.residual)
        for key in ("task", "scale", "colour", "value_range", "mode", "tile"):
            assert store.attrs[key] == ref.attrs[key], key
        assert store.attrs.model_spec["state_sha256"] == ref.attrs.model_spec["state_sha256"]
    assert by_processes.attrs.identity == ref.attrs.identity == by_cluster.attrs.identity
    assert by_object.attrs.model == "TinySR" and by_object.attrs.model_spec["kind"] == "object"
    # a module object's store is verified with the module; the command line has no file to rebuild it from
    assert pipeline.verify_store(by_object, module, progress=False).status == "passed"
    other = example_model()
    with pytest.raises(ValueError, match="is not the module the store was computed from"):
        pipeline.svd_store(by_object, 2, source="model", model=other, progress=False)
    checked = CliRunner().invoke(main, ["verify", str(by_object.path), "--quiet"])
    assert checked.exit_code == 1 and "which has no file to rebuild it from" in checked.output
    assert "tcp://" not in (tmp_path / "dist.zarr" / "zarr.json").read_text()
    # the same call again finds the finished store
    again = pipeline.compute_store(module, None, tmp_path / "object.zarr", workers=2, **common)
    assert again.attrs.timings["runs"] == 1


def test_verify_rebuilds_the_example_from_its_file(trained, example_store, tmp_path, monkeypatch):
    """`linterp verify` rebuilds the example from the file it is pointed to (the recorded name is not in the
    current folder) and the checks pass, the Jacobian check included (the network is piecewise linear)."""
    _, weights = trained
    monkeypatch.chdir(tmp_path)
    result = cli("verify", example_store.path, "--model", EXAMPLE, "--weights", weights, "--quiet")
    line = result.output.strip().splitlines()[0]
    assert line.startswith(f"{example_store.path}: passed") and "jacobian" in line.split(";")[0]  # it ran
    missing = CliRunner().invoke(main, ["verify", str(example_store.path), "--quiet"])
    assert missing.exit_code == 1 and "pass --model PATH/tiny_sr.py:make" in missing.output
    report = pipeline.verify_store(example_store.path, f"{EXAMPLE}:make", weights=weights, progress=False)
    assert report.status == "passed"


def test_changed_model_file_is_refused_in_one_line(tmp_path, monkeypatch):
    mine = tmp_path / "mynet.py"
    shutil.copyfile(EXAMPLE, mine)
    monkeypatch.chdir(tmp_path)
    args = ["compute", "--model", "mynet.py:make", "--model-arg", "features=4", "--model-arg", "blocks=1",
            "--crop", "0,0,8,8", "--out", "my.zarr", "--quiet"]
    cli(*args)
    before = open_store("my.zarr").F[...]
    mine.write_text(mine.read_text() + "\n# tuned the slope\n")
    one_line_error(CliRunner().invoke(main, args), "mynet.py has changed since the store was computed")
    assert np.array_equal(open_store("my.zarr").F[...], before)
    # rebuilding the model from the store refuses the changed file too
    refused = CliRunner().invoke(main, ["svd", "my.zarr", "--k", "2", "--from-model", "--quiet"])
    one_line_error(refused, "mynet.py has changed since the store was computed")
    checked = CliRunner().invoke(main, ["verify", "my.zarr", "--quiet"])
    assert checked.exit_code == 1 and "Traceback" not in checked.output
    assert "NOT RUN model: not run: mynet.py has changed since the store was computed" in checked.output
    assert checked.output.count("NOT RUN") == 1 and "(also probe, rows, jacobian, windows)" in checked.output


def write(folder: Path, name: str, code: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


BAD = """
    import torch
    from torch import nn

    def number():
        return 3

    def boom():
        raise RuntimeError("weights server unreachable")

    class Shrinks(nn.Module):  # valid convolution: the output is 2 pixels smaller
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)

        def forward(self, x):
            return self.conv(x)

    class Strided(nn.Module):  # down by 2, up by 2: odd sides come back one pixel larger
        def __init__(self):
            super().__init__()
            self.down, self.up = nn.Conv2d(3, 3, 3, stride=2, padding=1), nn.ConvTranspose2d(3, 3, 2, stride=2)

        def forward(self, x):
            return self.up(self.down(x))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(x), x

    class Wave(nn.Module):  # torch.cumprod has no linear-interpreter rule
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1))

        def forward(self, x):
            return torch.cumprod(self.body(x), 1)

    class Spectrum(nn.Module):  # a complex intermediate: named, not mistaken for a constant
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return torch.fft.fft2(self.body(x)).real

    class Odd(nn.Module):  # control flow on the input's shape: torch.fx cannot trace it
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            if x.shape[-1] % 2:
                x = x[..., :-1]
            return self.conv(x)
"""
#: the line of Odd's branch in bad.py, which the error names
ODD_LINE = textwrap.dedent(BAD).splitlines().index("        if x.shape[-1] % 2:") + 1


def test_bad_specs_give_one_line(tmp_path, monkeypatch):
    write(tmp_path, "bad.py", BAD)
    write(tmp_path, "broken.py", "def make(:\n    pass\n")
    monkeypatch.chdir(tmp_path)
    cases = [
        (["--model", "nowhere/net.py:make"], "model file nowhere/net.py not found"),
        (["--model", "no_such_package.nets:make"], "module no_such_package.nets not found"),
        (["--model", "bad.py:nubmer"], "bad.py has no callable 'nubmer'; did you mean number?"),
        (["--model", "bad.py:number"], "number() returned int, not a torch.nn.Module"),
        (["--model", "bad.py:boom"], "boom() raised RuntimeError: weights server unreachable"),
        (["--model", "bad.py:Shrinks"], "output (1, 3, 6, 6) on the input (1, 3, 8, 8) is neither an image"),
        (["--model", "bad.py:Shrinks"], "it is smaller than the input: convolutions without padding"),
        (["--model", "bad.py:Pair"], "returns tuple on the input (1, 3, 8, 8), not a tensor"),
        (["--model", "bad.py:Wave"], "no linear-interpreter rule for function"),
        (["--model", "bad.py:Spectrum"], "fft2 at 'fft_fft2': it gives complex values"),
        (["--model", "bad.py"], "unknown model 'bad.py'; for your own model name its factory too: bad.py:FACTORY"),
        (["--model", "bad.py:Odd"], f"cannot be traced by torch.fx (symbolically traced variables cannot be used "
                                    f"as inputs to control flow) at bad.py:{ODD_LINE}: if x.shape[-1] % 2:"),
        (["--model", "broken.py:make"], "broken.py failed to import (line 1): SyntaxError"),
        (["--model", f"{EXAMPLE}:make", "--model-arg", "depth=3"], "unexpected keyword argument 'depth'"),
        (["--model", f"{EXAMPLE}:make", "--model-arg", "depth"], "is not KEY=VALUE"),
        (["--model", f"{EXAMPLE}:make", "--input-range", "0,2"], "input range '0,2' is not one of"),
        (["--model", f"{EXAMPLE}:make", "--weights", "missing.pt"], "weights file missing.pt does not exist"),
        (["--model", "bicubic-x2", "--model-arg", "a=1"], "--model-arg is for your own models"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(main, ["compute", *args, "--crop", "0,0,8,8", "--out", "never.zarr", "--quiet"])
        one_line_error(result, message)
    odd = CliRunner().invoke(main, ["compute", "--model", "bad.py:Strided", "--crop", "0,0,7,5", "--out",
                                    "never.zarr", "--quiet"])
    one_line_error(odd, "output (1, 3, 6, 8) on the input (1, 3, 5, 7) is neither an image (1, C, H, W) of the "
                        "input's size or an integer multiple of it, nor class scores (1, N); its sides are almost a "
                        "multiple of the input's: a network with strided layers may need sides that are multiples "
                        "of its total stride (--crop X,Y,W,H with W and H divisible by 4 or 8)")
    wrong = tmp_path / "wrong.pt"
    torch.save({"head.weight": torch.zeros(1)}, wrong)
    result = CliRunner().invoke(main, ["compute", "--model", f"{EXAMPLE}:make", "--weights", str(wrong), "--crop",
                                       "0,0,8,8", "--out", "never.zarr", "--quiet"])
    one_line_error(result, "missing keys: body.0.conv1.bias")
    assert not Path("never.zarr").exists()


UNSEEN_SR = """
    import torch.nn.functional as F
    from torch import nn

    class LumaSR(nn.Module):
        '''×3 on one channel: conv, PReLU, a transposed convolution, and a nearest-neighbour skip.'''

        def __init__(self, width=6):
            super().__init__()
            self.feat = nn.Conv2d(1, width, 3, padding=1)
            self.act = nn.PReLU(width)
            self.up = nn.ConvTranspose2d(width, 1, kernel_size=3, stride=3)

        def forward(self, x):
            return self.up(self.act(self.feat(x))) + F.interpolate(x, scale_factor=3, mode="nearest")
"""

UNSEEN_I2I = """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinyUNet(nn.Module):
        '''Image to image in [-1, 1]: one level down (max-pool) and up, a concatenated skip, tanh.'''

        def __init__(self, width=4):
            super().__init__()
            self.enc = nn.Conv2d(3, width, 3, padding=1)
            self.mid = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                     nn.Upsample(scale_factor=2, mode="nearest"))
            self.dec = nn.Conv2d(2 * width, 3, 3, padding=1)

        def forward(self, x):
            skip = F.leaky_relu(self.enc(x), 0.2)
            return torch.tanh(self.dec(torch.cat([skip, self.mid(skip)], dim=1)))

    def make(width=4):
        return TinyUNet(width)
"""


def test_model_files_the_project_never_saw(tmp_path, monkeypatch):
    """A one-channel ×3 SR (functional skip, transposed convolution) from a file, and a U-Net image-to-image
    model from a package (package.module:FACTORY, input range [-1, 1]): task, scale and colour are inferred, and
    the stores hold F·x0 + r = f(x0); the piecewise-linear one also F = its Jacobian."""
    write(tmp_path, "luma_sr.py", UNSEEN_SR)
    write(tmp_path, "nets/__init__.py", "")
    write(tmp_path, "nets/unet.py", UNSEEN_I2I)
    monkeypatch.chdir(tmp_path)
    cli("compute", "--model", "luma_sr.py:LumaSR", "--model-arg", "width=5", "--crop", "40,40,10,10",
        "--out", "luma.zarr", "--tile", "5", "--quiet")
    cli("compute", "--model", "nets.unet:make", "--input-range", "-1,1", "--crop", "8,8,12,12",
        "--out", "unet.zarr", "--quiet")
    luma, unet = open_store("luma.zarr", require_complete=True), open_store("unet.zarr", require_complete=True)
    assert (luma.attrs.task, luma.attrs.scale, luma.attrs.colour) == ("sr", 3, "y")
    assert luma.F.shape == (1, 30, 30, 1, 10, 10) and luma.attrs.model == "luma_sr.py:LumaSR"
    assert (unet.attrs.task, unet.attrs.scale, unet.attrs.colour) == ("i2i", 1, "rgb")
    assert unet.attrs.value_range == [-1.0, 1.0] and -1 <= unet.x0.min() and unet.x0.max() <= 1
    assert unet.attrs.model == "nets.unet:make" and unet.attrs.model_spec["module"] == "nets.unet"
    assert unet.attrs.model_spec["file"]["name"] == "unet.py"
    for store in (luma, unet):
        F = store.F[...].reshape(int(np.prod(store.out_shape)), -1)
        recon = F @ store.x0.reshape(-1) + store.residual.reshape(-1)
        assert np.abs(recon - store.y0.reshape(-1)).max() <= 1e-5 * np.abs(store.y0).max()
    from pipeline.models import user

    model = user.build(user.parse_spec("luma_sr.py:LumaSR", {"width": 5}))
    pixels = [(0, 0, 0), (0, 4, 7), (0, 9, 9)]
    want = columns_by_jvp(model, luma.x0, pixels)
    assert np.abs(np.stack([luma.column(*p) for p in pixels]) - want).max() <= 1e-5 * np.abs(want).max()


UNSEEN_CLASSIFIER = """
    from torch import nn

    def make(classes=10):
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, classes))
"""


def test_classify_takes_a_user_classifier(tmp_path, monkeypatch):
    write(tmp_path, "digits_net.py", UNSEEN_CLASSIFIER)
    monkeypatch.chdir(tmp_path)
    result = cli("classify", "--model", "digits_net.py:make", "--dataset", "digits", "--size", "32", "--limit", "2",
                 "--figures", "1", "--out", "report", "--quiet")
    assert "digits_net.py:make: 2 images" in result.output
    records = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(records) == 2
    for r in records:
        total = r["input_term"] + sum(c["value"] for c in r["contributions"])
        assert total == pytest.approx(r["score"], rel=1e-4, abs=1e-5)
    one_line_error(CliRunner().invoke(main, ["classify", "--model", f"{EXAMPLE}:make", "--dataset", "digits",
                                             "--size", "32", "--out", "r2"]), "is not a classifier (task 'sr')")


def test_svd_export_video_and_browser(trained, example_store, tmp_path, monkeypatch):
    """svd --from-model rebuilds the example from its file (named, or found in the current folder), the SVD is
    exact on the stored F, and a two-panel site (with a registry model of the same crop) shows the stored filters
    in the browser."""
    _, weights = trained
    store = tmp_path / "tiny.zarr"
    shutil.copytree(example_store.path, store)
    monkeypatch.chdir(tmp_path)
    missing = CliRunner().invoke(main, ["svd", str(store), "--k", "3", "--from-model", "--weights", str(weights),
                                        "--quiet"])
    one_line_error(missing, "which is not in the current folder: pass --model PATH/tiny_sr.py:make")
    cli("svd", store, "--k", "3", "--from-model", "--model", EXAMPLE, "--weights", weights, "--quiet",
        "--tol", "1e-5")
    s = open_store(store)
    S, U, V = s.svd()
    F = s.F[...].reshape(int(np.prod(s.out_shape)), -1).astype(np.float64)
    for i in range(3):
        assert np.abs(F @ V[i].reshape(-1) - S[i] * U[i].reshape(-1)).max() <= 1e-3 * S[i]
    assert S[0] == pytest.approx(np.linalg.norm(F, 2), rel=1e-4)
    # found by name in the current folder (weights next to it)
    shutil.copyfile(EXAMPLE, tmp_path / "tiny_sr.py")
    shutil.copyfile(weights, tmp_path / "tiny-run3.pt")
    cli("svd", store, "--k", "2", "--from-model", "--quiet")
    bicubic = pipeline.compute_store("bicubic-x2", None, tmp_path / "bicubic.zarr", crop=CROP, progress=False)
    index = pipeline.export_site([store, bicubic], tmp_path / "site", progress=False)
    manifest = (tmp_path / "site" / "data" / "manifest.js").read_text()
    assert '"title":"tiny_sr.py:make"' in manifest and str(tmp_path) not in manifest
    cli("video", store, "--out", tmp_path / "walk.gif", "--duration", "1", "--fps", "3", "--zoom", "2", "--quiet")
    assert (tmp_path / "walk.gif").stat().st_size > 1000
    browser_check(index, open_store(store))


def browser_check(index: Path, store) -> None:
    from test_viewer_browser import CHROMIUM, Page

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (`make system` installs it)")
    from playwright.sync_api import sync_playwright

    from pipeline.export.measure import ARGS as BROWSER_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = Page(browser, index.parent)
            before = page.hover(0, "in", 5, 7)
            page.wait_render(before)
            got, scale = page.shown_values(0, "out")
            want = store.column(0, 5, 7)[0]
            assert scale == pytest.approx(np.abs(want).max(), rel=1e-5)
            assert (np.abs(got - want) <= scale / 254 + 1e-6).all()
            before = page.hover(0, "out", 13, 9)
            page.wait_render(before)
            got, scale = page.shown_values(0, "in")
            want = store.row(0, 13, 9)[0]
            assert (np.abs(got - want) <= scale / 254 + 1e-6).all() and scale > 0
            page.clean()
        finally:
            browser.close()


def test_run_applies_a_user_model(tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "sr.png"
    result = cli("run", "--model", f"{EXAMPLE}:make", "--crop", "0,0,20,16", "--out", out)
    assert "wrote" in result.output
    # untrained, the example is its bilinear skip alone: twice the size of the crop
    assert iio.imread(out).shape == (32, 40, 3)


def test_input_ranges_written_with_decimals_are_the_same_ranges():
    from pipeline.models.user import UserModelError, input_range

    assert input_range("0.0, 1.0") == input_range("0,1") == (0.0, 1.0)
    assert input_range("-1.,1") == (-1.0, 1.0) and input_range("0,255.0") == (0.0, 255.0)
    for bad in ("0,2", "a,b", "1"):
        with pytest.raises(UserModelError, match="is not one of 0,1 | 0,255 | -1,1"):
            input_range(bad)


LAZY = """
    from torch import nn

    def make():
        return nn.Sequential(nn.LazyConv2d(4, 3, padding=1), nn.ReLU(), nn.LazyConv2d(3, 3, padding=1))
"""


def test_lazy_layers_need_weights_or_a_first_run(tmp_path, monkeypatch):
    """A lazy layer without parameters is refused in one line naming it; its weights, saved from a model that ran
    once, give it its shapes, and then F is the Jacobian's columns."""
    write(tmp_path, "lazy.py", LAZY)
    monkeypatch.chdir(tmp_path)
    args = ["compute", "--model", "lazy.py:make", "--crop", "0,0,8,8", "--quiet"]
    one_line_error(CliRunner().invoke(main, [*args, "--out", "never.zarr"]),
                   "module LazyConv2d at '0' is a lazy layer whose parameters do not exist yet")
    assert not Path("never.zarr").exists()
    torch.manual_seed(0)
    ran = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.LazyConv2d(3, 3, padding=1))
    ran(torch.zeros(1, 3, 8, 8))
    torch.save(ran.state_dict(), tmp_path / "lazy.pt")
    cli(*args, "--weights", "lazy.pt", "--out", "lazy.zarr")
    cli("verify", "lazy.zarr", "--quiet")


def test_weights_written_by_training_code_load_into_a_user_model(tmp_path, monkeypatch):
    """The user's net trained elsewhere: a DistributedDataParallel state dict exported to .safetensors, and a
    Lightning checkpoint holding the net and its EMA (timm's ModelEmaV2 under `model_ema.module.`): each builds the
    model that computes as the trained one (the EMA copy for the checkpoint)."""
    from safetensors.torch import save_file

    from pipeline.models import user

    write(tmp_path, "luma_sr.py", UNSEEN_SR)
    monkeypatch.chdir(tmp_path)
    spec = user.parse_spec("luma_sr.py:LumaSR", {"width": 5})
    trained = {}
    for seed in (1, 2):
        net = user.build(spec)
        gen = torch.Generator().manual_seed(seed)
        net.load_state_dict({k: v + 0.1 * torch.randn(v.shape, generator=gen) for k, v in net.state_dict().items()})
        trained[seed] = net
    ema, plain = trained[1].state_dict(), trained[2].state_dict()
    save_file({"module." + k: v for k, v in ema.items()}, tmp_path / "ddp.safetensors")
    torch.save({"epoch": 9, "global_step": 900, "optimizer_states": [], "lr_schedulers": [],
                "state_dict": {**{"model." + k: v for k, v in plain.items()},
                               **{"model_ema.module." + k: v for k, v in ema.items()}}}, tmp_path / "last.ckpt")
    x = torch.rand(1, 1, 7, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = trained[1](x)
        for name in ("ddp.safetensors", "last.ckpt"):
            assert torch.equal(user.build(spec, tmp_path / name)(x), want), name
