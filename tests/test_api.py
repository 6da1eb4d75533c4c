"""The Python API (docs/api.md) as a notebook uses it: module objects in any floating precision, images given as
arrays of other types or as PIL images, crops as tuples, and one-line errors for what it cannot take."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

import pipeline
from pipeline.cli import main
from pipeline.images import ImageError
from pipeline.models.user import state_digest
from pipeline.sources import read_image

pytestmark = pytest.mark.timeout(300)

CROP = "0,0,12,12"


def small_net(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, channels, 3, padding=1))


def test_float64_module_is_computed_on_a_float32_copy(tmp_path):
    """A float64 module (a researcher's `net.double()`) gives the store of its float32 copy, verified, with the
    module left as it was (float64, training mode, the same parameters); verify and the SVD from the model take it
    again."""
    net32 = small_net().eval()
    net64 = small_net().double().train()
    state = {k: v.clone() for k, v in net64.state_dict().items()}
    ref = pipeline.compute_store(net32, None, tmp_path / "f32.zarr", crop=CROP, progress=False)
    store = pipeline.compute_store(net64, None, tmp_path / "f64.zarr", crop=CROP, progress=False)
    assert store.complete and store.attrs.verification["status"] == "passed"
    assert np.array_equal(store.F[...], ref.F[...]) and np.array_equal(store.y0, ref.y0)
    recon = np.tensordot(store.F[...], store.x0, axes=3) + store.residual
    assert np.abs(recon - store.y0).max() <= 1e-5 * np.abs(store.y0).max()
    with torch.no_grad():
        y64 = net64.eval()(torch.from_numpy(store.x0).double()[None])[0].numpy()
    net64.train()
    assert np.abs(y64 - store.y0).max() <= 1e-5 * np.abs(y64).max()
    assert net64.training and next(net64.parameters()).dtype == torch.float64
    assert all(torch.equal(state[k], v) for k, v in net64.state_dict().items())
    assert pipeline.verify_store(store, net64, progress=False).status == "passed"
    svd = pipeline.svd_store(store, 2, model=net64, source="model", progress=False)
    assert svd.svd()[0].shape == (2,)


#: a model file whose factory returns ``small_net()`` in another precision (``--model-arg dtype=…``)
SPEC_FILE = """
import torch
from torch import nn


def make(dtype="float64"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    return net.to(getattr(torch, dtype))
"""


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_a_spec_whose_factory_returns_float64_or_float16_is_computed_on_a_float32_copy(tmp_path, monkeypatch,
                                                                                       dtype):
    """A spec goes the way of a module object: `linterp compute` computes its float32 copy (F·x0 + r = f(x0)),
    records the digest of the model the factory made, as the module-object store records that of the module;
    `linterp verify` rebuilds it and `linterp run` applies it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(SPEC_FILE)
    spec = ["--model", "net.py:make", "--model-arg", f"dtype={dtype}", "--crop", CROP]

    def cli(*args):
        result = CliRunner().invoke(main, [*args])
        assert result.exit_code == 0, result.output
        return result

    cli("compute", *spec, "--out", "spec.zarr", "--workers", "1", "--quiet")
    store = pipeline.open_store("spec.zarr")
    assert store.complete and store.attrs.verification["status"] == "passed"
    recon = np.tensordot(store.F[...], store.x0, axes=3) + store.residual
    assert np.abs(recon - store.y0).max() <= 1e-5 * np.abs(store.y0).max()
    made = small_net().to(getattr(torch, dtype)).eval()  # what the factory returns
    copy32 = small_net().to(getattr(torch, dtype)).float().eval()  # f: its float32 copy
    with torch.no_grad():
        y = copy32(torch.from_numpy(store.x0)[None])[0].numpy()
        y_made = made(torch.from_numpy(store.x0).to(made[0].weight.dtype)[None])[0].double().numpy()
    assert np.abs(recon - y).max() <= 1e-5 * np.abs(y).max()
    assert np.abs(y_made - y).max() <= (1e-5 if dtype == "float64" else 1e-2) * np.abs(y).max()
    # the module-object path on the same module: the same F, y0 and recorded digest (that of the module given)
    by_object = pipeline.compute_store(made, None, tmp_path / "object.zarr", crop=CROP, progress=False)
    assert np.array_equal(store.F[...], by_object.F[...]) and np.array_equal(store.y0, by_object.y0)
    assert store.attrs.model_spec["state_sha256"] == by_object.attrs.model_spec["state_sha256"] == state_digest(made)
    assert store.attrs.identity["state_sha256"] == by_object.attrs.identity["state_sha256"]
    assert "passed" in cli("verify", "spec.zarr", "--quiet").output
    cli("run", *spec, "--out", "y.png")
    want = np.clip(np.round(y.transpose(1, 2, 0) * 255), 0, 255)
    assert np.abs(iio.imread(tmp_path / "y.png").astype(np.float64) - want).max() <= 1


def test_a_torch_device_is_taken_where_a_device_is(tmp_path):
    """`device=torch.device("cpu")` computes and verifies as "cpu" does: F·x0 + r = f(x0)."""
    net = small_net().eval()
    store = pipeline.compute_store(net, None, tmp_path / "cpu.zarr", crop=CROP, device=torch.device("cpu"),
                                   progress=False)
    assert store.complete and store.attrs.timings["device"] == "cpu"
    with torch.no_grad():
        y = net(torch.from_numpy(store.x0)[None])[0].numpy()
    recon = np.tensordot(store.F[...], store.x0, axes=3) + store.residual
    assert np.abs(recon - y).max() <= 1e-5 * np.abs(y).max()
    assert pipeline.verify_store(store, net, device=torch.device("cpu"), progress=False).status == "passed"


def one_line_value_error(call, *words) -> None:
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal where torch sees no GPU; this machine has one")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1", torch.device("cuda"), torch.device("cuda", 0)])
def test_a_gpu_where_torch_sees_none_is_refused_in_one_line(tmp_path, device):
    """"cuda:N" and torch.device("cuda"…) get the line "cuda" gets, before any work; so does verify_store."""
    store = pipeline.compute_store(small_net(), None, tmp_path / "cpu.zarr", crop=CROP, device="cpu", progress=False)
    words = (f"--device {device}: no CUDA GPU is visible to torch",)
    one_line_value_error(lambda: pipeline.compute_store(small_net(), None, tmp_path / "gpu.zarr", crop=CROP,
                                                        device=device, progress=False), *words)
    assert not (tmp_path / "gpu.zarr").exists()
    one_line_value_error(lambda: pipeline.verify_store(store, small_net(), device=device, progress=False), *words)


def test_a_gpu_index_beyond_the_count_and_unknown_devices_are_refused_in_one_line(tmp_path, monkeypatch):
    """cuda:N past the GPUs torch sees names their count; other names and types list what is taken."""
    if not torch.cuda.is_available():  # no GPU here: torch is made to say it sees two (all linterp asks it)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    count = torch.cuda.device_count()
    seen = f"torch sees {count} CUDA GPU{'s' * (count != 1)} (cuda:0"
    for device, words in [(f"cuda:{count}", (f"--device cuda:{count}:", seen)),
                          (torch.device("cuda", count + 3), (f"--device cuda:{count + 3}:", seen)),
                          ("cuda:x", ("unknown device 'cuda:x' (auto, cpu, cuda or cuda:N)",)),
                          ("gpu", ("unknown device 'gpu'",)), (0, ("unknown device 0",))]:
        one_line_value_error(lambda: pipeline.compute_store(small_net(), None, tmp_path / "x.zarr", crop=CROP,
                                                            device=device, progress=False), *words)
        assert not (tmp_path / "x.zarr").exists()


def test_images_of_other_types_and_tuple_crops(tmp_path):
    """What a notebook holds: int64 pixels, PIL images and (x, y, w, h) crops read as the uint8 array would."""
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    want, ref, box = read_image(rgb, CROP)
    for image in (rgb.astype(np.int64), Image.fromarray(rgb), rgb / 255.0):
        img, got_ref, got_box = read_image(image, (0, 0, 12, 12))
        assert np.array_equal(img, want) and got_ref == ref and got_box == box
    grey, _, _ = read_image(Image.fromarray(rgb[:, :, 0]), [0, 0, 12, 12])
    assert np.array_equal(grey[:, :, 0], rgb[:12, :12, 0])
    store = pipeline.compute_store(small_net(), Image.fromarray(rgb), tmp_path / "pil.zarr", crop=(0, 0, 12, 12),
                                   progress=False)
    assert store.complete and store.attrs.crop == [0, 0, 12, 12]


@pytest.mark.parametrize("image, words", [
    (torch.rand(3, 16, 16), "torch.Tensor: give a numpy array"),
    ([[0, 1], [2, 3]], "the image is a list"),
    (np.zeros((3, 16, 16), np.uint8), "channels first; give (H, W, C)"),
    (np.full((16, 16, 3), 200.0), "floats from 200 to 200, not in 0..1: give uint8 pixels or floats in 0..1"),
    (np.full((16, 16), 300, np.int64), "int64 samples from 300 to 300, not in 0..255"),
])
def test_images_it_cannot_take_are_refused_in_one_line(image, words):
    with pytest.raises(ImageError) as err:
        read_image(image)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("crop", [(0, 0, 12), (0.0, 0, 12, 12), {"x": 0}])
def test_malformed_crop_objects_are_refused_in_one_line(crop):
    with pytest.raises(ImageError, match="is not \"X,Y,W,H\" nor"):
        read_image(None, crop)


@pytest.mark.parametrize("model", [3, lambda x: x, None])
def test_a_model_of_another_type_is_refused_in_one_line(model, tmp_path):
    with pytest.raises(TypeError, match="model must be a registry name .* or a torch.nn.Module, not"):
        pipeline.compute_store(model, None, tmp_path / "x.zarr", crop=CROP, progress=False)
    assert not (tmp_path / "x.zarr").exists()
