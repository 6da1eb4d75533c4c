"""The model zoo: families against the official facts, every registry name through a forward pass and the
engine's reconstruction identity, and the `linterp models` / `linterp run` commands on real PNG files."""
from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from pipeline import images
from pipeline.cli import main
from pipeline.models import UnknownModelError, WeightsError, available, build, class_names, spec
from pipeline.models.bicubic import Bicubic
from pipeline.models.classifiers import IMAGENET_MEAN, IMAGENET_STD, torchvision_classifier
from pipeline.models.cyclegan import ResnetGenerator, UnetGenerator
from pipeline.models.digits import DigitsVGG
from pipeline.models.edsr import EDSR, MeanShift
from pipeline.models.pixelshuffle import PixelShuffleNet

torch.set_num_threads(1)

REQUIRED = (["bicubic-x2", "bicubic-x3", "bicubic-x4", "pixelshuffle-x2", "pixelshuffle-x3", "pixelshuffle-x4",
             "edsr-baseline-x2", "edsr-baseline-x3", "edsr-baseline-x4", "edsr-x2", "edsr-x3", "edsr-x4",
             "edsr-small-x4", "i2i-label", "digits-vgg", "digits-vgg-bn", "cyclegan-style_vangogh",
             "cyclegan-style_ukiyoe", "cyclegan-facades_photo2label", "cyclegan-horse2zebra"]
            + ["alexnet", "squeezenet1_0", "squeezenet1_1", "resnet18", "resnet34", "resnet50", "resnet101",
               "resnet152", "densenet121", "densenet161", "densenet169", "densenet201", "inception_v3"]
            + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")])

#: Small input sides for the engine check (the big networks at tiny inputs, Inception at its minimum 75).
SIDES = {"sr": 8, "i2i": 16}
TINY_SR = {"edsr-x2": 4, "edsr-x3": 4, "edsr-x4": 4}


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def shapes(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- families against the fact sheet ---------------------------------------------------------------------------

def test_edsr_baseline_x4_official_keys_and_sizes():
    model = EDSR(4, 16, 64, 1.0)
    keys = shapes(model)
    assert len(keys) == 78 and params(model) - 24 == 1_517_571  # MeanShift's 24 numbers are frozen
    assert keys["head.0.weight"] == (64, 3, 3, 3) and keys["body.16.weight"] == (64, 64, 3, 3)
    assert keys["body.15.body.2.weight"] == (64, 64, 3, 3) and keys["tail.0.2.weight"] == (256, 64, 3, 3)
    assert keys["tail.1.weight"] == (3, 64, 3, 3) and keys["sub_mean.weight"] == (3, 3, 1, 1)
    relus = {id(model.body[i].body[1]) for i in range(16)}
    assert len(relus) == 1, "EDSR uses one shared ReLU object"
    assert torch.allclose(model.sub_mean.bias, -torch.tensor([114.444, 111.4605, 103.020]))
    assert torch.equal(model.add_mean.weight[:, :, 0, 0], torch.eye(3))
    assert not any(p.requires_grad for p in model.sub_mean.parameters())


def test_edsr_full_and_other_scales():
    full = EDSR(4, 32, 256, 0.1)
    keys = shapes(full)
    assert len(keys) == 142 and params(full) - 24 == 43_089_923
    assert keys["tail.0.0.weight"] == (1024, 256, 3, 3) and "body.32.weight" in keys
    assert shapes(EDSR(3))["tail.0.0.weight"] == (576, 64, 3, 3) and "tail.0.2.weight" not in shapes(EDSR(3))
    assert shapes(EDSR(2))["tail.0.0.weight"] == (256, 64, 3, 3)
    with pytest.raises(ValueError, match="scale"):
        EDSR(5)


def test_edsr_res_scale_and_mean_shift_act_as_written():
    model = EDSR(2, 1, 4, res_scale=0.1).eval()
    x = torch.rand(1, 3, 5, 6) * 255
    block = model.body[0]
    h = model.head(model.sub_mean(x))
    expected_block = h + 0.1 * block.body[2](torch.relu(block.body[0](h)))
    assert torch.allclose(block(h), expected_block)
    mean = 255 * torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)
    assert torch.allclose(model.sub_mean(x), x - mean, atol=1e-4)
    assert isinstance(model.add_mean, MeanShift)


def test_cyclegan_resnet_generator_official_layout():
    model = ResnetGenerator()
    keys = shapes(model)
    assert len(keys) == 48 and params(model) == 11_378_179
    assert keys["model.1.weight"] == (64, 3, 7, 7) and keys["model.19.weight"] == (256, 128, 3, 3)
    assert keys["model.22.weight"] == (128, 64, 3, 3) and keys["model.26.weight"] == (3, 64, 7, 7)
    for b in range(10, 19):
        assert keys[f"model.{b}.conv_block.1.weight"] == keys[f"model.{b}.conv_block.5.weight"] == (256, 256, 3, 3)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 23 and all(not m.affine and not m.track_running_stats for m in norms)
    with torch.no_grad():
        y = ResnetGenerator(ngf=4, n_blocks=1).eval()(torch.rand(1, 3, 65, 47) * 2 - 1)
    assert y.shape == (1, 3, 68, 48) and y.abs().max() <= 1


def test_cyclegan_dropout_shifts_block_keys_as_upstream():
    keys = shapes(ResnetGenerator(ngf=4, n_blocks=1, use_dropout=True))
    assert "model.10.conv_block.6.weight" in keys and "model.10.conv_block.5.weight" not in keys


def test_unet_generator_layout_and_activated_skip():
    model = UnetGenerator(3, 2, num_downs=5, ngf=4).eval()
    keys = shapes(model)
    assert keys["model.model.0.weight"] == (4, 3, 4, 4) and "model.model.0.bias" not in keys  # BatchNorm: no bias
    assert keys["model.model.1.model.1.weight"] == (8, 4, 4, 4) and "model.model.1.model.1.bias" not in keys
    assert keys["model.model.3.weight"] == (8, 2, 4, 4) and "model.model.3.bias" in keys  # outermost up-conv
    inner = model.model.model[1]
    seen = {}
    inner.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0].clone(), y=out))
    with torch.no_grad():
        y = model(torch.rand(1, 3, 32, 32) * 2 - 1)
    assert y.shape == (1, 2, 32, 32)
    # upstream's LeakyReLU works in place, so its skip branch carries leaky_relu(x), not x
    assert torch.equal(seen["y"][:, :4], F.leaky_relu(seen["x"], 0.2))


def test_unet_generator_through_the_engine():
    """Not in the registry (pix2pix weights are a different family), but a family file: it must interpret exactly."""
    from pipeline.interpreter import interpret

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = UnetGenerator(3, 3, num_downs=6, ngf=4, use_dropout=True).eval()  # one dropout level
    x0 = torch.rand(1, 3, 64, 128) * 2 - 1
    with torch.no_grad():
        y = model(x0)
    li = interpret(model, x0)
    assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-4 * y.abs().max()


def test_pixelshuffle_net_official_layout():
    model = PixelShuffleNet(3)
    assert params(model) == 59_657
    assert shapes(model) == {"conv1.weight": (64, 1, 5, 5), "conv1.bias": (64,), "conv2.weight": (64, 64, 3, 3),
                             "conv2.bias": (64,), "conv3.weight": (32, 64, 3, 3), "conv3.bias": (32,),
                             "conv4.weight": (9, 32, 3, 3), "conv4.bias": (9,)}
    assert PixelShuffleNet(4)(torch.rand(2, 1, 5, 7)).shape == (2, 1, 20, 28)


def cubic(d: np.ndarray, a: float = -0.75) -> np.ndarray:
    d = np.abs(d)
    return np.where(d <= 1, (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1,
                    np.where(d < 2, a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a, 0.0))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_columns_are_the_bicubic_kernel(scale):
    n, k = 12, 6  # an interior input pixel, so no border clamping reaches its column
    impulse = torch.zeros(1, 1, n, n, dtype=torch.float64)
    impulse[0, 0, k, k] = 1
    column = Bicubic(scale)(impulse)[0, 0].numpy()
    src = (np.arange(n * scale) + 0.5) / scale - 0.5
    w = cubic(src - k)
    np.testing.assert_allclose(column, np.outer(w, w), atol=1e-12)


def test_digits_vgg_layout():
    plain, bn = DigitsVGG(False), DigitsVGG(True)
    assert shapes(plain)["classifier.0.weight"] == (128, 1024) and shapes(plain)["classifier.3.weight"] == (10, 128)
    assert [k for k in shapes(bn) if k.startswith("features.1.")] == [
        "features.1.weight", "features.1.bias", "features.1.running_mean", "features.1.running_var",
        "features.1.num_batches_tracked"]
    assert bn.eval()(torch.rand(3, 1, 32, 32)).shape == (3, 10)


def test_classifier_wrapper_normalises_inside_and_keeps_torchvision_keys():
    import torchvision

    model = torchvision_classifier("squeezenet1_1").eval()
    reference = torchvision.models.squeezenet1_1(weights=None)
    assert list(model.state_dict()) == ["net." + k for k in reference.state_dict()]
    x = torch.rand(1, 3, 40, 40)
    expected = model.net((x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    inception = torchvision_classifier("inception_v3")
    assert inception.net.transform_input and inception.net.AuxLogits is not None


# --- the registry ------------------------------------------------------------------------------------------------

def test_registry_names_and_specs():
    names = [s.name for s in available()]
    assert len(names) == len(set(names))
    assert set(REQUIRED) <= set(names)
    assert sum(n.startswith("cyclegan-") for n in names) == 18
    for s in available():
        assert s.task in ("sr", "i2i", "classify") and s.colour in ("rgb", "y", "gray")
        assert s.value_range[0] < s.value_range[1] and s.scale >= 1 and s.description
        assert (s.scale > 1) == (s.task == "sr")
    assert spec("edsr-x4").weights.endswith("edsr_x4-4f62e9ef.pt") and spec("resnet50").weights.endswith(
        "resnet50-0676ba61.pth")
    assert spec("cyclegan-style_vangogh").weights.endswith("/pretrained_models/style_vangogh.pth")
    assert spec("pixelshuffle-x3").weights.endswith("superres_epoch100-44c6958e.pth")


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="did you mean.*pixelshuffle-x4") as info:
        build("pixelshufle-x4")
    assert "\n" not in str(info.value)
    with pytest.raises(UnknownModelError, match="linterp models"):
        spec("zzzzzzzz")


def test_random_init_is_seeded_and_eval():
    a, b = build("edsr-small-x4", "random"), build("edsr-small-x4", "random")
    assert not a.training
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_default_weights_errors_are_one_line(tmp_path, monkeypatch):
    from pipeline.models import registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(WeightsError, match="linterp train digits-vgg"):
        build("digits-vgg")
    with pytest.raises(WeightsError, match="no published weights.*--weights PATH"):
        build("pixelshuffle-x2")
    with pytest.raises(WeightsError, match="no parameters"):
        build("bicubic-x2", tmp_path / "x.pt")
    assert isinstance(build("bicubic-x3"), Bicubic)


def test_class_names():
    assert class_names("digits-vgg") == [str(d) for d in range(10)]
    names = class_names("resnet18")
    assert len(names) == 1000 and names[0] == "tench"
    with pytest.raises(ValueError):
        class_names("bicubic-x2")


def small_input(name: str) -> torch.Tensor:
    s = spec(name)
    if s.fixed_size:
        h, w = s.fixed_size
    else:
        side = TINY_SR.get(name) or SIDES.get(s.task) or max(s.min_size, 32)
        side = -(-max(side, s.min_size) // s.multiple) * s.multiple
        h, w = side, side + s.multiple  # not square, to catch transposed axes
    generator = np.random.default_rng(sum(map(ord, name)))
    img = generator.integers(0, 256, size=(h, w, 3 if s.colour == "rgb" else 1), dtype=np.uint8)
    return images.to_input(img, s)


@pytest.mark.parametrize("name", [s.name for s in available()])
def test_every_name_builds_runs_and_reconstructs(name):
    """Random init: a forward pass of the right shape, and F x0 + r = f(x0) through the engine."""
    from pipeline.interpreter import interpret

    s = spec(name)
    model = build(name, "random")
    x0 = small_input(name)
    with torch.no_grad():
        y = model(x0)
    h, w = x0.shape[-2:]
    if s.task == "classify":
        assert y.shape == (1, 10 if name.startswith("digits") else 1000)
    else:
        assert y.shape == (1, x0.shape[1], h * s.scale, w * s.scale)
    li = interpret(model, x0)
    assert torch.allclose(li.output, y, rtol=1e-5, atol=1e-5 * y.abs().max().item())
    error = (li.forward(x0) + li.residual - y).abs().max().item()
    assert error <= 1e-4 * y.abs().max().item(), f"{name}: reconstruction error {error:.3g}"


# --- the commands --------------------------------------------------------------------------------------------------

def test_models_command_lists_every_name():
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in REQUIRED:
        assert f"\n{name} " in result.output
    sr_only = CliRunner().invoke(main, ["models", "--task", "sr"]).output
    assert "edsr-x4" in sr_only and "resnet18" not in sr_only


def rgb_png(path, h=12, w=10, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    iio.imwrite(path, img)
    return img


def test_run_bicubic_writes_the_upscaled_png(tmp_path):
    img = rgb_png(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, ["run", "--model", "bicubic-x2", "--image", str(tmp_path / "in.png"),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = images.to_image(Bicubic(2)(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255), spec("bicubic-x2"))
    assert np.array_equal(iio.imread(out), expected)


def test_run_pixelshuffle_on_y_keeps_colour(tmp_path):
    rgb_png(tmp_path / "in.png", 8, 6)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, ["run", "--model", "pixelshuffle-x4", "--weights", "random", "--image",
                                       str(tmp_path / "in.png"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert iio.imread(out).shape == (32, 24, 3)


def test_run_classifier_prints_top_classes(tmp_path):
    rgb_png(tmp_path / "in.png", 32, 32)
    result = CliRunner().invoke(main, ["run", "--model", "digits-vgg-bn", "--weights", "random", "--image",
                                       str(tmp_path / "in.png"), "--top", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()  # stderr says how the image was prepared
    probabilities = [float(line.split()[0]) for line in lines]
    assert len(lines) == 3 and probabilities == sorted(probabilities, reverse=True)


def test_run_default_image_and_crop(tmp_path):
    out = tmp_path / "o.png"
    result = CliRunner().invoke(main, ["run", "--model", "i2i-label", "--weights", "random", "--crop", "4,8,20,16",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert iio.imread(out).shape == (16, 20, 3)


@pytest.mark.parametrize("args, message", [
    (["--model", "edsr-baseline-x2", "--weights", "random", "--image", "GRAY", "--out", "o.png"], "needs an RGB"),
    (["--model", "edsr-baselin-x2", "--out", "o.png"], "did you mean edsr-baseline-x2"),
    (["--model", "cyclegan-style_vangogh", "--weights", "random", "--crop", "0,0,30,30", "--out", "o.png"],
     "multiples of 4"),
    (["--model", "bicubic-x2", "--image", "BAD", "--out", "o.png"], "cannot read image"),
    (["--model", "bicubic-x2"], "--out"),
    (["--model", "resnet18", "--weights", "BAD"], "not a valid PyTorch checkpoint"),
    (["--model", "pixelshuffle-x4", "--weights", "NAN", "--image", "GRAY", "--out", "o.png"],
     "the model's output holds 1024 NaN or infinite values"),
    (["--model", "bicubic-x2", "--image", "GRAY", "--out", "GRAY"], "is the input image: choose another name"),
    (["--model", "bicubic-x2", "--crop", "", "--out", "o.png"], "crop '' is not X,Y,W,H"),
    (["--model", "digits-vgg-bn", "--weights", "random", "--image", "GRAY", "--out", "o.png"],
     "digits-vgg-bn is a classifier: it prints its top classes and writes no image (leave out --out)"),
])
def test_run_errors_are_one_line(tmp_path, args, message):
    iio.imwrite(tmp_path / "gray.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "bad").write_text("not an image")
    weights = build("pixelshuffle-x4", "random").state_dict()
    torch.save({k: torch.full_like(v, float("nan")) for k, v in weights.items()}, tmp_path / "nan.pt")
    args = [a.replace("GRAY", str(tmp_path / "gray.png")).replace("BAD", str(tmp_path / "bad"))
            .replace("NAN", str(tmp_path / "nan.pt")) for a in args]
    args = [str(tmp_path / a) if a == "o.png" else a for a in args]
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert (tmp_path / "gray.png").stat().st_size > 0 and not (tmp_path / "o.png").exists()


class OutOfMemory(torch.nn.Module):
    """Fails as torch's CPU allocator does on an image too large for the machine."""

    def forward(self, x):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 2304000000 bytes. Error code 12 (Cannot allocate memory)")


def test_run_model_failing_on_the_image_is_one_line(tmp_path, monkeypatch):
    """A registry model that fails on the input (out of memory on a whole photo) gave a traceback."""
    import pipeline.models

    rgb_png(tmp_path / "in.png", 12, 20)
    monkeypatch.setattr(pipeline.models, "build", lambda *args, **kwargs: OutOfMemory())
    result = CliRunner().invoke(main, ["run", "--model", "edsr-small-x4", "--image", str(tmp_path / "in.png"),
                                       "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output and result.exception is not None
    assert result.output.strip().splitlines() == [
        "Error: edsr-small-x4 failed on the 20×12 input: [enforce fail at alloc_cpu.cpp:127] err == 0. "
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 2304000000 bytes. Error code 12 "
        "(Cannot allocate memory); use --crop X,Y,W,H for a smaller part"]
    assert not (tmp_path / "o.png").exists()


HEADS = """
from torch import nn


def conv_head():  # scores (1, 4, 1, 1): a 1×1 convolution after pooling
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1))


def flat():  # one input size only: a Linear on the flattened 40×40 features
    return nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 40 * 40, 3))
"""


def test_run_your_own_classifiers_conv_head_and_fixed_size(tmp_path, monkeypatch):
    """A (1, K, 1, 1) head prints its top classes (it was a topk traceback), each once (your own model's class is
    its index: it was printed twice); a model of one input size is run with --size and told about it without."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "heads.py").write_text(HEADS)
    rgb_png(tmp_path / "in.png", 30, 50)
    head = CliRunner().invoke(main, ["run", "--model", "heads.py:conv_head", "--image", "in.png", "--top", "4"])
    assert head.exit_code == 0, head.output
    lines = head.stdout.strip().splitlines()
    assert len(lines) == 4 and all(len(line.split()) == 2 for line in lines)
    assert sorted(int(line.split()[1]) for line in lines) == [0, 1, 2, 3]
    sized = CliRunner().invoke(main, ["run", "--model", "heads.py:flat", "--image", "in.png", "--size", "40"])
    assert sized.exit_code == 0, sized.output
    assert "centre 40×40" in sized.stderr and len(sized.stdout.strip().splitlines()) == 3
    unsized = CliRunner().invoke(main, ["run", "--model", "heads.py:flat", "--image", "in.png"])
    assert unsized.exit_code == 1 and len(unsized.output.strip().splitlines()) == 1
    assert unsized.output.strip().endswith("; a classifier that takes one input size needs --size SIDE (an image "
                                           "model: --crop X,Y,W,H)")
    image = CliRunner().invoke(main, ["run", "--model", "bicubic-x2", "--size", "40", "--out", "o.png"])
    assert image.exit_code == 2 and "--size is for classifiers; bicubic-x2 takes the image at its own size" in (
        image.output) and not (tmp_path / "o.png").exists()
