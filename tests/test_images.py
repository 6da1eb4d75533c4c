"""Images: real PNG/JPEG files in and out, crops, JFIF colour conversions against PIL, the default image, and the
mapping between images and a model's input and output units."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import images
from pipeline.images import ImageError
from pipeline.models import spec
from pipeline.models.bicubic import Bicubic


def random_rgb(h=10, w=14, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_load_rgb_png_exactly(tmp_path):
    img = random_rgb()
    iio.imwrite(tmp_path / "a.png", img)
    loaded = images.load_image(tmp_path / "a.png")
    assert loaded.dtype == np.uint8 and np.array_equal(loaded, img)


def test_grayscale_stays_one_channel(tmp_path):
    gray = random_rgb()[:, :, 0]
    iio.imwrite(tmp_path / "g.png", gray)
    loaded = images.load_image(tmp_path / "g.png")
    assert loaded.shape == (10, 14, 1) and np.array_equal(loaded[:, :, 0], gray)


def test_alpha_palette_and_16_bit_files(tmp_path):
    rgba = np.dstack([random_rgb(), np.full((10, 14), 7, np.uint8)])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert np.array_equal(images.load_image(tmp_path / "rgba.png"), rgba[:, :, :3])
    palette = Image.fromarray(random_rgb()).quantize(colors=16)
    palette.save(tmp_path / "p.png")
    assert np.array_equal(images.load_image(tmp_path / "p.png"), np.asarray(palette.convert("RGB")))
    deep = (np.arange(6 * 5, dtype=np.uint16).reshape(6, 5) * 2000)
    iio.imwrite(tmp_path / "deep.png", deep)
    assert np.array_equal(images.load_image(tmp_path / "deep.png")[:, :, 0], np.round(deep / 257).astype(np.uint8))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_do(tmp_path, orientation):
    """Pixels come as Pillow's exif_transpose shows them (orientation 6: a portrait stored on its side)."""
    from PIL import ImageOps

    stored = Image.fromarray(random_rgb(6, 10))
    exif = stored.getexif()
    exif[274] = orientation
    stored.save(tmp_path / "o.png", exif=exif)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert np.array_equal(images.load_image(tmp_path / "o.png"), shown)
    assert shown.shape[:2] == ((10, 6) if orientation >= 5 else (6, 10))


def test_cmyk_is_converted_and_float_samples_outside_0_1_are_refused(tmp_path):
    rgb = random_rgb(12, 12)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")  # lossless: C = 255 − R, K = 0
    assert np.array_equal(images.load_image(tmp_path / "c.tif"), rgb)
    iio.imwrite(tmp_path / "f.tif", rgb[:, :, 0].astype(np.float32))  # 0..255 stored as floats
    with pytest.raises(ImageError, match="floating-point samples from .* not in 0..1"):
        images.load_image(tmp_path / "f.tif")
    iio.imwrite(tmp_path / "u.tif", rgb[:, :, 0].astype(np.float32) / 255)
    assert np.array_equal(images.load_image(tmp_path / "u.tif")[:, :, 0], rgb[:, :, 0])


def test_jpeg_loads(tmp_path):
    img = random_rgb(16, 16)
    iio.imwrite(tmp_path / "a.jpg", img, quality=95)
    assert images.load_image(tmp_path / "a.jpg").shape == (16, 16, 3)


@pytest.mark.parametrize("content", ["missing", "text", "truncated", "directory"])
def test_unreadable_files_give_one_line(tmp_path, content):
    path = tmp_path / "x.png"
    if content == "text":
        path.write_text("hello")
    elif content == "truncated":
        iio.imwrite(path, random_rgb(64, 64))
        path.write_bytes(path.read_bytes()[:100])
    elif content == "directory":
        path.mkdir()
    with pytest.raises(ImageError, match="cannot read image") as info:
        images.load_image(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("colour", [True, False])
def test_multi_page_tiff_gives_its_first_page(tmp_path, colour):
    """A TIFF of several pages, as Pillow writes it (one series): its first page, like an animation's first
    frame (imageio's index 0 gave the whole stack, refused as 'not a 2-D image')."""
    first, second = random_rgb(12, 10, seed=1), random_rgb(12, 10, seed=2)
    if not colour:
        first, second = first[:, :, :1], second[:, :, :1]
    pages = [Image.fromarray(a if colour else a[:, :, 0]) for a in (first, second)]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert np.array_equal(images.load_image(tmp_path / "pages.tif"), first)


def test_lzw_compressed_tiff_is_read(tmp_path):
    """LZW, the usual compression of TIFFs from scanners and photo editors: tifffile needs the optional
    imagecodecs package for it ('<COMPRESSION.LZW: 5> requires the 'imagecodecs' package'); Pillow reads it."""
    rgb = random_rgb(12, 10, seed=4)
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert np.array_equal(images.load_image(tmp_path / "lzw.tif"), rgb)
    pages = [Image.fromarray(rgb[:, :, 0]), Image.fromarray(rgb[:, :, 1])]
    pages[0].save(tmp_path / "pages.tif", compression="tiff_lzw", save_all=True, append_images=pages[1:])
    assert np.array_equal(images.load_image(tmp_path / "pages.tif"), rgb[:, :, :1])


def test_planar_tiff_and_multispectral_samples(tmp_path):
    """A TIFF that stores its samples in planes (planar configuration 2, as ImageJ or GDAL write): RGB as Pillow
    shows it (it was refused as 'not a 2-D image (array shape (3, H, W))'); 5 samples per pixel: named as such."""
    import tifffile

    rgb = random_rgb(12, 10, seed=3)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(images.load_image(tmp_path / "planar.tif"), rgb)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "planar.tif")), rgb)
    tifffile.imwrite(tmp_path / "bands.tif", np.zeros((12, 10, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(ImageError, match=r"bands.tif has 5 samples per pixel .*grey and RGB"):
        images.load_image(tmp_path / "bands.tif")


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty"),
    (b"hello, this is not a picture\n", "not an image file"),
    (b"hi\n", "not an image file"),  # too short for a reader's header: it was a struct unpacking error
])
def test_empty_and_non_image_files_say_so(tmp_path, content, message):
    """imageio's message for both was 'Could not find a backend … pip install imageio[pyav]' (video plugins)."""
    path = tmp_path / "photo.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=f"cannot read image .*photo.png: {message}") as info:
        images.load_image(path)
    assert "\n" not in str(info.value) and "backend" not in str(info.value)


def test_parse_crop_and_crop():
    assert images.parse_crop("3, 4,5,6") == (3, 4, 5, 6)
    for bad in ("1,2,3", "a,b,c,d", "-1,0,4,4", "0,0,0,4", "", "\uff11,0,4,4"):  # a full-width digit
        with pytest.raises(ImageError):
            images.parse_crop(bad)
    img = random_rgb(10, 14)
    assert np.array_equal(images.crop(img, (3, 4, 5, 6)), img[4:10, 3:8])
    with pytest.raises(ImageError, match="outside the 14×10 image"):
        images.crop(img, (10, 0, 5, 5))


def test_ycbcr_is_pils_jfif_conversion():
    img = random_rgb(32, 32, seed=3)
    ours = images.rgb_to_ycbcr(img)
    pil = np.asarray(Image.fromarray(img).convert("YCbCr")).astype(np.float64)
    # PIL truncates its fixed-point results: floor(ours) equals PIL nearly everywhere, never more than 1 away
    assert np.abs(np.floor(ours) - pil).max() <= 1 and (np.floor(ours) != pil).mean() < 0.1
    assert np.allclose(images.ycbcr_to_rgb(ours), img, atol=1e-9)
    back = np.asarray(Image.fromarray(np.round(ours).astype(np.uint8), "YCbCr").convert("RGB")).astype(float)
    assert np.abs(images.ycbcr_to_rgb(np.round(ours)) - back).max() <= 1.5
    assert np.allclose(images.rgb_to_ycbcr(np.full((1, 1, 3), 255))[0, 0], [255, 128, 128])


def test_default_image_is_the_astronaut_face():
    from skimage import data

    name, img = images.default_image()
    top, left, h, w = images.DEFAULT_IMAGE_BOX
    assert name == "astronaut-face" and img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert np.array_equal(img, data.astronaut()[top:top + h, left:left + w])


@pytest.mark.parametrize("name", ["edsr-baseline-x4", "cyclegan-style_vangogh", "resnet18", "bicubic-x2"])
def test_rgb_models_round_trip_units(name):
    s = spec(name)
    img = random_rgb(16, 20)
    x = images.to_input(img, s)
    assert x.shape == (1, 3, 16, 20) and x.dtype == torch.float32
    lo, hi = s.value_range
    assert torch.allclose(x[0, :, 2, 3], torch.tensor(lo + (hi - lo) * img[2, 3] / 255.0, dtype=torch.float32))
    assert np.array_equal(images.to_image(x, s), img)


def test_y_and_gray_models_take_luma():
    img = random_rgb(32, 32)
    y = images.to_input(img, spec("pixelshuffle-x3"))
    assert y.shape == (1, 1, 32, 32)
    assert torch.allclose(y[0, 0].double(), torch.from_numpy(images.rgb_to_ycbcr(img)[:, :, 0] / 255), atol=1e-6)
    gray = img[:, :, :1]
    assert torch.equal(images.to_input(gray, spec("digits-vgg"))[0, 0], torch.from_numpy(gray[:, :, 0] / 255).float())


def test_to_image_clips_and_rounds():
    s = spec("cyclegan-style_ukiyoe")
    y = torch.tensor([-1.5, -1.0, 0.0, 0.999, 2.0]).view(1, 1, 1, 5)
    assert images.to_image(y, s)[0, :, 0].tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError):
        images.to_image(torch.zeros(2, 3, 4, 4), s)


@pytest.mark.parametrize("name, shape, message", [
    ("edsr-x2", (8, 8, 1), r"needs an RGB image; this one is grayscale \(save it as RGB first"),
    ("cyclegan-horse2zebra", (18, 16, 3), "multiples of 4"),
    ("inception_v3", (60, 80, 3), "too small"),
    ("digits-vgg", (32, 30, 1), "needs a 32×32 image"),
])
def test_size_and_channel_checks(name, shape, message):
    with pytest.raises(ImageError, match=message) as info:
        images.to_input(np.zeros(shape, np.uint8), spec(name))
    assert "\n" not in str(info.value)


def test_merge_luma_keeps_the_chroma_of_the_input():
    img = random_rgb(12, 12, seed=5)
    upscaled = Bicubic(2)(torch.from_numpy(images.rgb_to_ycbcr(img).transpose(2, 0, 1)[None].copy()))[0]
    y_image = np.clip(np.round(upscaled[0].numpy()), 0, 255).astype(np.uint8)[:, :, None]
    merged = images.merge_luma(y_image, img)
    assert merged.shape == (24, 24, 3) and merged.dtype == np.uint8
    expected = np.clip(np.round(images.ycbcr_to_rgb(upscaled.numpy().transpose(1, 2, 0))), 0, 255)
    assert np.abs(merged.astype(int) - expected).max() <= 2  # only the rounding of Y differs


def _write(kind: str, path, rgb: np.ndarray) -> np.ndarray:
    """Write ``rgb`` (H, W, 3) uint8 to ``path`` as a file of ``kind``; returns the pixels a viewer shows, RGBA
    (H, W, 4) or grey + alpha (H, W, 2) where the file has a transparency, else RGB or grey (H, W, 1)."""
    if kind == "cmyk-jpeg":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG", quality=95)
        return np.asarray(Image.open(path).convert("RGB"))
    if kind == "palette-trns-png":  # a palette PNG whose entry 0 is transparent (tRNS), as GIF-like tools save
        Image.fromarray(rgb).quantize(colors=8).save(path, format="PNG", transparency=0)
    elif kind == "trns-gif":
        Image.fromarray(rgb).quantize(colors=8).save(path, format="GIF", transparency=0)
    elif kind == "grey-trns-png":
        Image.fromarray(rgb[:, :, 0]).save(path, format="PNG", transparency=int(rgb[0, 0, 0]))
    elif kind == "la-png":
        Image.fromarray(np.dstack([rgb[:, :, 0], rgb[:, :, 1]]), "LA").save(path, format="PNG")
    elif kind == "rgba-webp":
        Image.fromarray(np.dstack([rgb, rgb[:, :, 0]]), "RGBA").save(path, format="WEBP", lossless=True)
    elif kind == "ycbcr-tiff":
        Image.fromarray(rgb).convert("YCbCr").save(path, format="TIFF")
        return np.asarray(Image.open(path).convert("RGB"))
    shown = Image.open(path)
    return np.asarray(shown.convert("LA" if shown.mode in ("L", "LA") else "RGBA"))


@pytest.mark.parametrize("kind, channels, colour", [
    ("cmyk-jpeg", 4, "CMYK converted to RGB"),  # was recorded as 3 (RGB)
    ("ycbcr-tiff", 3, "YCbCr converted to RGB"),  # its Y, Cb, Cr samples were taken for R, G, B
    ("palette-trns-png", 4, "RGBA"),  # the transparency entry was dropped: 3, no alpha to composite
    ("trns-gif", 4, "RGBA"),
    ("grey-trns-png", 2, "grey + alpha"),
    ("la-png", 2, "grey + alpha"),
    ("rgba-webp", 4, "RGBA"),
])
def test_files_are_read_as_viewers_show_them_and_recorded_as_what_they_hold(tmp_path, kind, channels, colour):
    """``load_image_file``: the pixels as Pillow shows them (alpha dropped, or composited by ``flatten_alpha``), and
    the file's samples per pixel and colour as they are; a transparency entry is an alpha channel."""
    rgb = random_rgb(12, 16, seed=5)
    path = tmp_path / f"{kind}.{kind.split('-')[-1].replace('jpeg', 'jpg').replace('tiff', 'tif')}"
    shown = _write(kind, path, rgb)
    img, got_channels, got_colour = images.load_image_file(path)
    assert (got_channels, got_colour) == (channels, colour)
    has_alpha = shown.shape[2] in (2, 4) and channels in (2, 4)
    assert np.array_equal(img, shown[:, :, :-1] if has_alpha else shown)
    composited = images.load_image_file(path, composite_alpha=True)[0]
    assert np.array_equal(composited, images.flatten_alpha(shown) if has_alpha else shown)
    if kind.endswith("trns-png") or kind == "trns-gif":
        assert (shown[:, :, -1] == 0).any() and (shown[:, :, -1] == 255).any()  # some pixels are transparent


def test_colour_spaces_linterp_does_not_convert_are_refused(tmp_path):
    """A CIELAB TIFF: its L, a, b samples were taken for R, G, B (an image unlike the one viewers show)."""
    Image.fromarray(random_rgb()).convert("LAB").save(tmp_path / "lab.tif")
    with pytest.raises(ImageError, match=r"lab.tif is a CIELAB image; .*convert it to RGB first") as info:
        images.load_image(tmp_path / "lab.tif")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("samples, photometric, extra", [(2, "minisblack", "grey and 1"), (4, "rgb", "RGB and 1"),
                                                        (5, "rgb", "RGB and 2")])
def test_tiff_extra_samples_that_are_not_alpha_are_refused(tmp_path, samples, photometric, extra):
    """TIFF extra samples marked 'unspecified' (ExtraSamples 0, tifffile's default) are not alpha: a 2-sample grey
    file was read as grey + alpha (its second channel composited as a transparency), an RGB one with 2 more
    samples refused as '5 samples per pixel' without saying why. An RGBA TIFF (unassociated alpha) is read."""
    import tifffile

    data = np.random.default_rng(0).integers(0, 256, (12, 10, samples), dtype=np.uint8)
    colours = 1 if photometric == "minisblack" else 3
    tifffile.imwrite(tmp_path / "x.tif", data, photometric=photometric, planarconfig="contig",
                     extrasamples=[0] * (samples - colours))
    with pytest.raises(ImageError, match=rf"x.tif has {samples} samples per pixel \({extra} unspecified, not "
                                         rf"alpha\); linterp reads grey and RGB images"):
        images.load_image(tmp_path / "x.tif")
    tifffile.imwrite(tmp_path / "alpha.tif", data[:, :, :colours + 1], photometric=photometric,
                     planarconfig="contig", extrasamples=[2])
    img, channels, colour = images.load_image_file(tmp_path / "alpha.tif")
    assert (channels, colour) == (colours + 1, images.COLOURS[colours + 1])
    assert np.array_equal(img, data[:, :, :colours])


def test_an_image_array_stored_as_pages_is_refused_and_a_stack_gives_its_first_page(tmp_path):
    """tifffile and imageio write an (H, W, 2) array as H pages of W × 2 pixels: it was read as its first page,
    a 2-pixel-wide strip. A stack (N, H, W) of N pages gives its first page, as Pillow shows it."""
    import tifffile

    data = np.random.default_rng(0).integers(0, 256, (30, 40, 2), dtype=np.uint8)
    iio.imwrite(tmp_path / "la.tif", data)
    with pytest.raises(ImageError, match=r"la.tif holds an array of shape \(30, 40, 2\) stored as 30 pages of "
                                         r"2×40 pixels"):
        images.load_image(tmp_path / "la.tif")
    stack = np.random.default_rng(1).integers(0, 256, (10, 30, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    assert np.array_equal(images.load_image(tmp_path / "stack.tif")[:, :, 0], stack[0])


def test_a_tiff_past_pillows_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """tifffile has no limit against decompression bombs: a float RGB TIFF (which Pillow does not open, so its
    limit was never applied) of any claimed size was allocated. Pillow's limit (lowered here to keep the file
    small) now applies to TIFFs that tifffile reads."""
    import tifffile
    from PIL import Image as PILImage

    tifffile.imwrite(tmp_path / "big.tif", np.zeros((100, 100, 3), np.float32), photometric="rgb")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"big.tif is 100×100 pixels, more than 2000 \(Pillow's limit"):
        images.load_image(tmp_path / "big.tif")


def test_nan_samples_are_named_as_such(tmp_path):
    """A float TIFF holding NaN was refused as 'samples from nan to nan, not in 0..1'."""
    data = np.full((6, 5), 0.5, np.float32)
    data[2, 3] = np.nan
    iio.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(ImageError, match=r"nan.tif holds 1 NaN or infinite samples"):
        images.load_image(tmp_path / "nan.tif")


def test_a_png_named_as_another_format_is_read_by_its_content(tmp_path):
    """A PNG named .img (the extension of Analyze volumes): imageio's ITK plugin was chosen by the name and
    failed with 'itk could not be found. Please try python -m pip install itk …'; a JPEG named .png was read."""
    rgb = random_rgb(8, 6, seed=7)
    Image.fromarray(rgb).save(tmp_path / "photo.img", format="PNG")
    assert np.array_equal(images.load_image(tmp_path / "photo.img"), rgb)
    Image.fromarray(rgb).save(tmp_path / "photo.png", format="JPEG", quality=95)
    assert np.array_equal(images.load_image(tmp_path / "photo.png"), np.asarray(Image.open(tmp_path / "photo.png")))
