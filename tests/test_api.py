"""The Python API (docs/api.md) as a notebook uses it: module objects in any floating precision, images given as
arrays of other types or as PIL images, crops as tuples, and one-line errors for what it cannot take."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pipeline
from pipeline.images import ImageError
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
