"""How image files become classifier inputs (`pipeline.preprocess`): real PNG files of digits in, the digits
models' inputs out; the same function in `linterp run` and `linterp classify`."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import preprocess as P
from pipeline.classify_report import load_input
from pipeline.cli import main
from pipeline.models.registry import spec
from pipeline.training import data, render

DIGITS = spec("digits-vgg")


def _uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 1, H, W) in [0, 1] -> uint8 (H, W)."""
    return torch.round(x[0, 0] * 255).to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def test_digits():
    _, (x8, y) = data.digits_8x8()
    return x8[:6], y[:6]


def test_64x64_rgb_and_32x32_grey_files_of_one_digit_give_the_same_input(tmp_path, test_digits):
    """The issue's check: a 64×64 RGB file and a 32×32 greyscale file of the same digit -> the same tensor
    within interpolation error; a different digit (the control) is far from it."""
    x8, _ = test_digits
    grey32 = _uint8(render.upsample(x8[:1], 32, "bilinear"))
    big = render.upsample(x8[:1], 64, "bilinear")[0, 0].numpy()
    ink = np.array([0.1, 0.1, 0.45])  # dark blue ink on white paper: an RGB file of the other polarity
    rgb64 = np.round((1 - big[:, :, None] * (1 - ink)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "grey32.png", grey32)
    iio.imwrite(tmp_path / "rgb64.png", rgb64)
    a, rec_a = load_input(tmp_path / "grey32.png", DIGITS, (32, 32))
    b, rec_b = load_input(tmp_path / "rgb64.png", DIGITS, (32, 32))
    assert a.shape == b.shape == (1, 1, 32, 32) and a.dtype == torch.float32
    assert rec_a["polarity"] == "kept" and rec_b["polarity"] == "inverted"
    assert rec_b["source_size"] == [64, 64] and rec_b["source_channels"] == 3 and rec_b["fitted"] == [32, 32]
    diff = (a - b).abs()
    # 8 → 64 → 32 (antialiased) vs 8 → 32: the kernels differ by under a pixel; the luma of the ink and the
    # 8-bit rounding add a few 1/255 steps; the levels put both on 0..1
    assert float(diff.mean()) < 0.01 and float(diff.max()) < 0.05  # measured: 0.002-0.003 and 0.013-0.023
    other = _uint8(render.upsample(x8[1:2], 32, "bilinear"))
    iio.imwrite(tmp_path / "other.png", other)
    c, _ = load_input(tmp_path / "other.png", DIGITS, (32, 32))
    assert float((a - c).abs().mean()) > 10 * float(diff.mean())


def test_polarity_auto_inverts_light_backgrounds_only(test_digits):
    x8, _ = test_digits
    img = _uint8(render.upsample(x8[:1], 32, "bicubic"))[:, :, None]
    light_on_dark, rec = P.classifier_input(img, DIGITS)
    dark_on_light, rec_inv = P.classifier_input(255 - img, DIGITS)
    assert rec["polarity"] == "kept" and rec_inv["polarity"] == "inverted"
    assert torch.allclose(light_on_dark, dark_on_light, atol=1e-6)
    assert torch.allclose(P.classifier_input(255 - img, DIGITS, polarity="invert")[0], light_on_dark, atol=1e-6)
    kept, rec_keep = P.classifier_input(255 - img, DIGITS, polarity="keep")
    assert rec_keep["polarity"] == "kept" and float((kept - light_on_dark).abs().mean()) > 0.3
    with pytest.raises(P.PreprocessError, match="polarity"):
        P.classifier_input(img, DIGITS, polarity="sideways")


def test_fit_keeps_the_aspect_ratio_and_pads_with_the_background():
    tall = np.full((40, 20, 1), 200, np.uint8)  # light paper ...
    tall[5:35, 8:12] = 30                       # ... with a dark vertical stroke
    x, rec = P.classifier_input(tall, DIGITS)
    assert rec["fitted"] == [32, 16] and rec["polarity"] == "inverted"
    assert rec["background"] == pytest.approx(1 - 200 / 255, abs=1e-6)
    assert float(x[..., :8].abs().max()) == 0 and float(x[..., 24:].abs().max()) == 0  # padding = background = 0
    col = x[0, 0, 16, 8:24]
    assert float(col.max()) == pytest.approx(1.0) and int(col.argmax()) in (7, 8)  # the stroke, centred
    assert float((x - x.flip(-1)).abs().max()) < 1e-6  # a symmetric drawing stays symmetric


def test_levels_map_background_to_0_and_the_strongest_stroke_to_1():
    img = np.full((32, 32, 1), 77, np.uint8)
    img[8:24, 14:18] = 153
    x, rec = P.classifier_input(img, DIGITS)
    assert rec["background"] == pytest.approx(77 / 255, abs=1e-6) and rec["peak"] == pytest.approx(153 / 255, abs=1e-6)
    assert float(x.min()) == 0 and float(x.max()) == pytest.approx(1)
    assert float(x[0, 0, 16, 16]) == pytest.approx(1) and float(x[0, 0, 2, 2]) == 0
    blank, rec_blank = P.classifier_input(np.full((32, 32, 1), 90, np.uint8), DIGITS)
    assert torch.isfinite(blank).all() and float(blank.abs().max()) == 0  # nothing stretched from nothing


def test_a_batch_gives_what_single_images_give(test_digits):
    x8, _ = test_digits
    imgs = np.stack([_uint8(render.upsample(x8[i:i + 1], 40, m))[:, :, None]
                     for i, m in enumerate(["nearest", "bilinear", "bicubic", "area", "nearest", "bicubic"])])
    imgs[2] = 255 - imgs[2]  # one of the other polarity in the same batch
    batch, records = P.classifier_inputs(imgs, DIGITS)
    for i, img in enumerate(imgs):
        single, rec = P.classifier_input(img, DIGITS)
        assert torch.equal(batch[i:i + 1], single) and rec == records[i]
    assert [r["polarity"] for r in records] == ["kept", "kept", "inverted", "kept", "kept", "kept"]


def test_transparent_background_is_composited_against_the_strokes(tmp_path, test_digits):
    x8, _ = test_digits
    alpha = _uint8(render.upsample(x8[:1], 32, "bilinear"))
    for colour, name in ((0, "black-ink.png"), (255, "white-ink.png")):
        rgba = np.dstack([np.full((32, 32, 3), colour, np.uint8), alpha])  # strokes only in the alpha channel
        iio.imwrite(tmp_path / name, rgba)
    grey = np.dstack([alpha])
    iio.imwrite(tmp_path / "grey.png", grey[:, :, 0])
    reference, _ = load_input(tmp_path / "grey.png", DIGITS, (32, 32))
    for name in ("black-ink.png", "white-ink.png"):
        x, _ = load_input(tmp_path / name, DIGITS, (32, 32))
        assert float((x - reference).abs().max()) <= 2 / 255 + 1e-6, name


def test_an_rgba_file_is_recorded_with_its_four_channels_and_computed_on_rgb(tmp_path, test_digits):
    """An RGBA PNG: the record (results.json's `preprocessing`, `linterp run`'s line) says 4 channels, RGBA, while
    the input is that of its RGB composite; RGB and grey files keep 3 and 1."""
    x8, _ = test_digits
    strokes = _uint8(render.upsample(x8[:1], 32, "bilinear"))
    rgba = np.dstack([np.zeros((32, 32, 3), np.uint8), strokes])  # black ink, strokes only in the alpha
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert iio.imread(tmp_path / "rgba.png").shape == (32, 32, 4)
    composite = np.repeat(255 - strokes[:, :, None], 3, axis=2)  # black over white, as flatten_alpha makes it
    iio.imwrite(tmp_path / "rgb.png", composite)
    x, rec = load_input(tmp_path / "rgba.png", DIGITS, (32, 32))
    x_rgb, rec_rgb = load_input(tmp_path / "rgb.png", DIGITS, (32, 32))
    assert (rec["source_channels"], rec["source_colour"]) == (4, "RGBA")
    assert (rec_rgb["source_channels"], rec_rgb["source_colour"]) == (3, "RGB")
    assert float((x - x_rgb).abs().max()) <= 1 / 255 + 1e-6
    source = ("source_channels", "source_colour")
    assert {k: v for k, v in rec.items() if k not in source} == {k: v for k, v in rec_rgb.items() if k not in source}
    assert load_input(tmp_path / "rgba.png", spec("vgg11"), (8, 8))[1]["source_channels"] == 4
    res = CliRunner().invoke(main, ["run", "--model", "digits-vgg", "--image", str(tmp_path / "rgba.png"),
                                    "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "input 32×32 RGBA -> grey" in res.stderr


def test_photo_method_is_torchvisions_resize_and_centre_crop():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, :30] = (255, 0, 0)
    x, rec = P.classifier_input(img, spec("vgg11"), (16, 16), P.PHOTO_CROP_RATIO)
    assert rec == {"method": "photo", "source_size": [40, 60], "source_channels": 3, "source_colour": "RGB",
                   "input_size": [16, 16], "resized": [18, 27], "crop": [1, 5]}
    assert x.shape == (1, 3, 16, 16) and float(x[0, 0, 8, 0]) == pytest.approx(1) and float(x[0, 0, 8, -1]) == 0
    assert P.input_size("vgg11", spec("vgg11")) == ((224, 224), P.PHOTO_CROP_RATIO)
    assert P.input_size("digits-vgg", DIGITS) == ((32, 32), 1.0)
    with pytest.raises(P.PreprocessError, match="32×32"):
        P.input_size("digits-vgg", DIGITS, 28)


@pytest.mark.parametrize("shape", [(1, 4000, 3), (4000, 1, 3), (2, 300, 3)])
def test_photo_method_never_makes_a_thin_image_whole_at_its_resized_size(monkeypatch, shape):
    """A 4000×1 image for a 224 classifier is resized to 1 024 000×256 before its centre crop: 6 GB of float64
    RGB, refused by the allocator in one traceback. The resize runs one axis at a time, cropping in between, with
    the values of the whole resize (compared on a 300×2 image, where the whole resize is affordable)."""
    import torch.nn.functional as TF

    img = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    largest, resize = [], TF.interpolate

    def interpolate(x, *args, **kwargs):
        y = resize(x, *args, **kwargs)
        largest.append(y[0, 0].numel())
        return y

    monkeypatch.setattr(P.F, "interpolate", interpolate)
    x, rec = P.classifier_input(img, spec("vgg11"))
    assert x.shape == (1, 3, 224, 224) and max(largest) <= 1024000  # the image resized along its long side
    assert rec["resized"] == [round(shape[0] * 256 / min(shape[:2])), round(shape[1] * 256 / min(shape[:2]))]
    if shape == (2, 300, 3):
        (top, left), (rh, rw) = rec["crop"], rec["resized"]
        values = torch.from_numpy(img.transpose(2, 0, 1)[None] / 255.0)
        whole = resize(values, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
        lo, hi = spec("vgg11").value_range
        want = lo + (hi - lo) * whole.clamp(0, 1)[:, :, top:top + 224, left:left + 224]
        assert torch.allclose(x.double(), want, atol=1e-6)


def test_run_reads_a_large_dark_on_white_digit_and_says_how(tmp_path, test_digits):
    """`linterp run` uses the same preprocessing as classify: a 64×64 black-on-white file is inverted and fitted."""
    x8, y = test_digits
    iio.imwrite(tmp_path / "d.png", 255 - _uint8(render.upsample(x8[3:4], 64, "nearest")))
    res = CliRunner().invoke(main, ["run", "--model", "digits-vgg", "--image", str(tmp_path / "d.png"), "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "inverted" in res.stderr and "fitted to 32×32" in res.stderr
    assert int(res.stdout.split()[1]) == int(y[3])


def test_a_cmyk_file_is_recorded_as_cmyk_with_its_conversion(tmp_path, test_digits):
    """A CMYK TIFF (as print workflows save): computed on its RGB conversion, as viewers show it, and recorded as
    what it is, 4 channels of CMYK converted to RGB (it was recorded as 3, RGB), in results.json's record and in
    `linterp run`'s line."""
    from PIL import Image

    x8, _ = test_digits
    rgb = np.repeat(255 - _uint8(render.upsample(x8[:1], 32, "bilinear"))[:, :, None], 3, axis=2)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.tif")  # lossless: C = 255 − R, K = 0
    iio.imwrite(tmp_path / "rgb.png", rgb)
    x, rec = load_input(tmp_path / "cmyk.tif", DIGITS, (32, 32))
    x_rgb, _ = load_input(tmp_path / "rgb.png", DIGITS, (32, 32))
    assert torch.equal(x, x_rgb)
    assert (rec["source_channels"], rec["source_colour"]) == (4, "CMYK converted to RGB")
    res = CliRunner().invoke(main, ["run", "--model", "digits-vgg", "--image", str(tmp_path / "cmyk.tif"),
                                    "--top", "1"])
    assert res.exit_code == 0, res.output
    assert "input 32×32 CMYK converted to RGB -> grey" in res.stderr


ANY_SIZE_CLASSIFIER = """
from torch import nn

def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5))
"""


def test_run_records_the_channels_of_the_file_for_your_own_classifier(tmp_path):
    """`linterp run --model FILE.py:FACTORY` on an RGBA file says RGBA (it said RGB: the user path read the file
    through sources.read_image, which gives no channel count, so the record fell back to the pixels' 3), and a
    classifier of your own gets the alpha composited as `linterp classify` and registry classifiers have it (it
    got the alpha dropped): the same scores as an RGB file of the composited pixels."""
    from pipeline import images

    (tmp_path / "net.py").write_text(ANY_SIZE_CLASSIFIER)
    rgba = np.dstack([np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8),
                      np.full((24, 24), 128, np.uint8)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    composited = images.load_image_file(tmp_path / "rgba.png", composite_alpha=True)[0]
    assert not np.array_equal(composited, rgba[:, :, :3])
    iio.imwrite(tmp_path / "rgb.png", composited)
    iio.imwrite(tmp_path / "dropped.png", rgba[:, :, :3])
    lines = {}
    for name in ("rgba.png", "rgb.png", "dropped.png"):
        res = CliRunner().invoke(main, ["run", "--model", f"{tmp_path / 'net.py'}:make", "--image",
                                        str(tmp_path / name), "--size", "16", "--top", "5"])
        assert res.exit_code == 0, res.output
        lines[name] = res.stderr, res.stdout
    assert "input 24×24 RGBA -> resized to 16×16, centre 16×16" in lines["rgba.png"][0]
    assert "input 24×24 RGB -> resized" in lines["rgb.png"][0]
    assert lines["rgba.png"][1] == lines["rgb.png"][1]  # the composited pixels, the same scores
    assert lines["rgba.png"][1] != lines["dropped.png"][1]
