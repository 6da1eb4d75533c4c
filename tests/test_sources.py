"""Store inputs named portably (file names and sha256, never paths) and found again: a store computed with a
weight file from a folder that later moves rebuilds its model from the weight cache or `--weights`, and a wrong
file is refused in one line."""
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.compute import compute
from pipeline.models import build
from pipeline.models.weights import WeightsError, file_sha256
from pipeline.sources import find_weights, model_from_store, model_source
from pipeline.store import FileRef, open_store

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """pixelshuffle-x4 with weights from a folder of their own, at an image in another, on a 12×12 crop."""
    root = tmp_path_factory.mktemp("sources")
    (root / "my weights").mkdir()
    (root / "photos").mkdir()
    weights = root / "my weights" / "ps-run7.pt"
    torch.save(build("pixelshuffle-x4", "random").state_dict(), weights)
    image = root / "photos" / "holiday.png"
    iio.imwrite(image, np.random.default_rng(3).integers(0, 256, (20, 18, 3), dtype=np.uint8))
    source, identity, attrs = model_source("pixelshuffle-x4", str(weights), False, str(image), "2,3,12,12")
    store = compute(root / "ps.zarr", source, identity=identity, attrs=attrs, device="cpu", progress=False,
                    workers=1)
    return root, weights, image, store


def test_store_names_its_inputs_by_file_name_and_sha256(computed):
    root, weights, image, store = computed
    attrs = store.attrs
    assert attrs.weights == FileRef("ps-run7.pt", file_sha256(weights))
    assert attrs.image == FileRef("holiday.png", file_sha256(image))
    assert attrs.crop == [2, 3, 12, 12] and attrs.model == "pixelshuffle-x4"
    stored = (store.path / "zarr.json").read_text()
    assert str(root) not in stored and "my weights" not in stored and "photos" not in stored


def test_model_is_found_again_by_sha256(computed, tmp_path, monkeypatch):
    root, weights, _, store = computed
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    moved = tmp_path / "elsewhere.pt"
    shutil.copyfile(weights, moved)
    x0 = torch.as_tensor(store.x0)[None]
    want = build("pixelshuffle-x4", "random")(x0)
    # not the default file, not in the cache: one line that says how to pass it
    with pytest.raises(WeightsError, match=r"\(ps-run7.pt, sha256 [0-9a-f]{12}…\) .* pass --weights PATH") as err:
        model_from_store(store)
    assert "\n" not in str(err.value)
    # the file under any name, given explicitly
    assert torch.equal(model_from_store(store, weights=moved)(x0), want)
    # another file given in its place is refused
    other = tmp_path / "other.pt"
    torch.save({k: v + 1 for k, v in build("pixelshuffle-x4", "random").state_dict().items()}, other)
    with pytest.raises(WeightsError, match="is not the weights file the store was computed with"):
        model_from_store(store, weights=other)
    # a copy in the weight cache under the recorded name
    (tmp_path / "cache").mkdir()
    shutil.copyfile(weights, tmp_path / "cache" / "ps-run7.pt")
    assert torch.equal(model_from_store(store)(x0), want)


def test_default_random_and_parameter_free_weights():
    from pipeline.models.registry import WEIGHTS_DIR

    project = WEIGHTS_DIR / "pixelshuffle-x4.pt"
    ref = FileRef(project.name, file_sha256(project))
    assert find_weights("pixelshuffle-x4", ref) == str(project)  # the project's default file
    assert find_weights("pixelshuffle-x4", FileRef("random", "random")) == "random"
    assert find_weights("bicubic-x4", FileRef()) is None
    with pytest.raises(WeightsError, match="pass --weights PATH"):
        find_weights("pixelshuffle-x4", FileRef(project.name, "0" * 64))  # same name, other content


def test_svd_from_model_takes_weights(computed, tmp_path, monkeypatch):
    _, weights, _, store = computed
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "store.zarr"
    shutil.copytree(store.path, copy)
    runner = CliRunner()
    missing = runner.invoke(main, ["svd", str(copy), "--k", "2", "--from-model", "--quiet"])
    assert missing.exit_code == 1 and "pass --weights PATH" in missing.output
    assert len(missing.output.strip().splitlines()) == 1
    done = runner.invoke(main, ["svd", str(copy), "--k", "2", "--from-model", "--weights", str(weights), "--quiet"])
    assert done.exit_code == 0, done.output
    assert open_store(copy).svd_k == 2 and open_store(copy).svd_attrs.source == "model"
