"""Weight files: official layouts load (with the adapters old official files need), bad files fail with one line
that says why, pickles are refused, and the cache fetches, verifies and reuses files (file:// URLs, no network)."""
from __future__ import annotations

import hashlib
import re

import pytest
import torch

from pipeline.models import WeightsError, build, registry
from pipeline.models import weights as wts
from pipeline.models.edsr import EDSR
from pipeline.models.pixelshuffle import PixelShuffleNet

torch.set_num_threads(1)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def random_state(model, seed=1) -> dict:
    """The model's state dict with fresh random float values (so loading it visibly changes the model)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


# --- official layouts ------------------------------------------------------------------------------------------

def fact_sheet_pixelshuffle_x3() -> dict:
    """The tutorial's superres_epoch100 layout, written from the fact sheet (not from our module)."""
    shapes = {"conv1.weight": (64, 1, 5, 5), "conv1.bias": (64,), "conv2.weight": (64, 64, 3, 3), "conv2.bias": (64,),
              "conv3.weight": (32, 64, 3, 3), "conv3.bias": (32,), "conv4.weight": (9, 32, 3, 3), "conv4.bias": (9,)}
    return {k: torch.randn(s) for k, s in shapes.items()}


def fact_sheet_cyclegan(stale_instance_norm_keys: bool) -> dict:
    """A 2018 CycleGAN generator file: the 48 keys of the fact sheet, plus the stale InstanceNorm statistics."""
    shapes = {"model.1.weight": (64, 3, 7, 7), "model.1.bias": (64,), "model.4.weight": (128, 64, 3, 3),
              "model.4.bias": (128,), "model.7.weight": (256, 128, 3, 3), "model.7.bias": (256,),
              "model.19.weight": (256, 128, 3, 3), "model.19.bias": (128,), "model.22.weight": (128, 64, 3, 3),
              "model.22.bias": (64,), "model.26.weight": (3, 64, 7, 7), "model.26.bias": (3,)}
    for b in range(10, 19):
        for c in (1, 5):
            shapes[f"model.{b}.conv_block.{c}.weight"] = (256, 256, 3, 3)
            shapes[f"model.{b}.conv_block.{c}.bias"] = (256,)
    state = {k: torch.randn(s) * 0.01 for k, s in shapes.items()}
    if stale_instance_norm_keys:
        norms = {2: 64, 5: 128, 8: 256, 20: 128, 23: 64}
        norms.update({f"{b}.conv_block.{i}": 256 for b in range(10, 19) for i in (2, 6)})
        for pos, c in norms.items():
            state.update({f"model.{pos}.running_mean": torch.zeros(c), f"model.{pos}.running_var": torch.ones(c),
                          f"model.{pos}.num_batches_tracked": torch.tensor(0)})
    return state


def test_pixelshuffle_x3_loads_the_tutorial_layout(tmp_path):
    state = fact_sheet_pixelshuffle_x3()
    torch.save(state, tmp_path / "superres_epoch100-44c6958e.pth")
    model = build("pixelshuffle-x3", tmp_path / "superres_epoch100-44c6958e.pth")
    assert torch.equal(model.conv4.weight, state["conv4.weight"])


def test_cyclegan_file_with_stale_instance_norm_statistics_loads(tmp_path):
    state = fact_sheet_cyclegan(stale_instance_norm_keys=True)
    assert len(state) == 48 + 23 * 3
    torch.save(state, tmp_path / "style_vangogh.pth")
    model = build("cyclegan-style_vangogh", tmp_path / "style_vangogh.pth")
    assert torch.equal(model.model[26].weight, state["model.26.weight"])
    # the stale keys go only where an InstanceNorm sits; elsewhere they are still unexpected
    state["model.4.running_mean"] = torch.zeros(128)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"unexpected keys: model\.4\.running_mean$"):
        build("cyclegan-style_vangogh", tmp_path / "bad.pth")


def test_edsr_file_without_mean_shift_keys_is_completed(tmp_path):
    model = EDSR(2, 16, 64)
    state = {k: v for k, v in random_state(model).items() if "_mean." not in k}
    assert len(state) == len(model.state_dict()) - 4
    torch.save(state, tmp_path / "edsr_baseline_x2-1bc95232.pt")
    loaded = build("edsr-baseline-x2", tmp_path / "edsr_baseline_x2-1bc95232.pt")
    assert torch.equal(loaded.head[0].weight, state["head.0.weight"])
    assert torch.allclose(loaded.add_mean.bias, torch.tensor([114.444, 111.4605, 103.020]))


@pytest.mark.parametrize("name", ["edsr-small-x4", "i2i-label", "digits-vgg-bn", "pixelshuffle-x4", "squeezenet1_0"])
def test_round_trip_of_our_own_state_dicts(tmp_path, name):
    source = build(name, "random")
    source.load_state_dict(random_state(source))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    assert same_weights(build(name, tmp_path / "w.pt"), source)


def test_torchvision_file_without_wrapper_prefix_and_densenet_legacy_names(tmp_path):
    source = build("densenet121", "random")
    state = random_state(source)
    # the 2017 files: legacy layer names, no `net.` prefix, and no BatchNorm counters (older than PyTorch 0.4.1)
    legacy = {re.sub(r"^net\.", "", re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)): v
              for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    torch.save(legacy, tmp_path / "densenet121-a639ec97.pth")
    loaded = build("densenet121", tmp_path / "densenet121-a639ec97.pth")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


# --- bad files -----------------------------------------------------------------------------------------------------

def test_another_architectures_file_lists_the_keys(tmp_path):
    torch.save(EDSR(2, 1, 8).state_dict(), tmp_path / "edsr.pt")
    with pytest.raises(WeightsError) as info:
        build("pixelshuffle-x2", tmp_path / "edsr.pt")
    message = str(info.value)
    assert "\n" not in message and "missing keys: conv1.bias, conv1.weight" in message
    assert "unexpected keys: add_mean.bias" in message and "and 8 more" in message


def test_wrong_shapes_are_listed(tmp_path):
    torch.save(PixelShuffleNet(2).state_dict(), tmp_path / "x2.pt")
    with pytest.raises(WeightsError, match=r"wrong shapes: conv4\.bias \(4,\) \(model \(9,\)\), conv4\.weight"):
        build("pixelshuffle-x3", tmp_path / "x2.pt")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "text"])
def test_corrupt_files_fail_clearly(tmp_path, damage):
    good = tmp_path / "good.pt"
    torch.save(PixelShuffleNet(2).state_dict(), good)
    data = {"garbage": bytes(range(256)) * 8, "truncated": good.read_bytes()[:2000], "empty": b"",
            "text": b"conv1.weight = 1"}[damage]
    (tmp_path / "bad.pt").write_bytes(data)
    with pytest.raises(WeightsError, match="not a valid PyTorch checkpoint") as info:
        build("pixelshuffle-x2", tmp_path / "bad.pt")
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build("pixelshuffle-x2", tmp_path / "nothing.pt")


def test_a_file_without_tensors_is_not_a_state_dict(tmp_path):
    torch.save({"epoch": 3}, tmp_path / "meta.pt")
    with pytest.raises(WeightsError, match="does not hold a state dict"):
        build("pixelshuffle-x2", tmp_path / "meta.pt")


def test_a_pickled_model_is_refused_unless_trusted(tmp_path):
    source = build("pixelshuffle-x2", "random")
    source.load_state_dict(random_state(source))
    torch.save(source, tmp_path / "model_epoch_30.pth")  # what pytorch/examples' main.py saves
    with pytest.raises(WeightsError, match="refusing to unpickle.*--trust-pickle"):
        build("pixelshuffle-x2", tmp_path / "model_epoch_30.pth")
    assert same_weights(build("pixelshuffle-x2", tmp_path / "model_epoch_30.pth", trust_pickle=True), source)


def test_wrapped_checkpoints_are_unwrapped(tmp_path):
    source = build("digits-vgg", "random")
    torch.save({"state_dict": source.state_dict(), "epoch": torch.tensor(3)}, tmp_path / "ckpt.pt")
    assert same_weights(build("digits-vgg", tmp_path / "ckpt.pt"), source)


# --- files that training code writes (BasicSR, DataParallel/DDP, Lightning, torch.compile, EMA, Hub) -----------------

def trained_edsr(seed=1):
    """An EDSR (edsr-small-x4) with random weights: the source whose outputs a loaded copy must give."""
    source = build("edsr-small-x4", "random")
    source.load_state_dict(random_state(source, seed))
    return source


def same_outputs(a, b) -> bool:
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def lightning_checkpoint(state: dict, attribute: str = "model") -> dict:
    """The layout of a Lightning .ckpt: the LightningModule's state dict (the net under its attribute) beside the
    loop's state, all of types weights_only=True reads."""
    return {"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.4.0",
            "state_dict": prefixed(state, attribute + "."),
            "optimizer_states": [{"state": {0: {"step": torch.tensor(700.0), "exp_avg": torch.zeros(3)}},
                                  "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.99), "params": [0]}]}],
            "lr_schedulers": [{"last_epoch": 7, "milestones": {250: 1}}], "callbacks": {}, "loops": {},
            "hparams_name": "kwargs", "hyper_parameters": {"scale": 4, "lr": 2e-4}}


def test_basicsr_files_load_their_ema_weights(tmp_path):
    """BasicSR / Real-ESRGAN / SwinIR save {'params': …, 'params_ema': …}; their inference scripts take
    params_ema."""
    ema, plain = trained_edsr(1), trained_edsr(2)
    torch.save({"params_ema": ema.state_dict()}, tmp_path / "RealESRGAN_x4plus.pth")
    torch.save({"params": plain.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "net_g_latest.pth")
    torch.save({"params": plain.state_dict()}, tmp_path / "NAFNet.pth")
    assert same_outputs(build("edsr-small-x4", tmp_path / "RealESRGAN_x4plus.pth"), ema)
    assert same_outputs(build("edsr-small-x4", tmp_path / "net_g_latest.pth"), ema)
    assert same_outputs(build("edsr-small-x4", tmp_path / "NAFNet.pth"), plain)


@pytest.mark.parametrize("wrap", [
    lambda m: torch.nn.DataParallel(m).state_dict(),  # `module.` (DistributedDataParallel's too)
    lambda m: torch.compile(m).state_dict(),  # `_orig_mod.`
    lambda m: torch.nn.DataParallel(torch.compile(m)).state_dict(),  # `module._orig_mod.`
    lambda m: lightning_checkpoint(m.state_dict(), "model"),
    lambda m: lightning_checkpoint(m.state_dict(), "net_g"),
    lambda m: {"state_dict": prefixed(m.state_dict(), "module.")},  # MPRNet, Uformer…
], ids=["DataParallel", "torch.compile", "DataParallel+compile", "Lightning-model", "Lightning-net_g",
        "module-in-wrapper"])
def test_training_wrappers_prefixes_are_stripped(tmp_path, wrap):
    source = trained_edsr()
    torch.save(wrap(source), tmp_path / "w.ckpt")
    assert same_outputs(build("edsr-small-x4", tmp_path / "w.ckpt"), source)


def test_a_prefix_is_stripped_only_when_every_key_has_it(tmp_path):
    """Besides the net, a Lightning module with a loss network: no prefix fits every key, so the keys are listed as
    they are in the file; a prefix whose removal leaves keys the model lacks stays too."""
    state = trained_edsr().state_dict()
    with_loss = lightning_checkpoint(state)
    with_loss["state_dict"]["loss.vgg.0.weight"] = torch.zeros(1)
    torch.save(with_loss, tmp_path / "loss.ckpt")
    with pytest.raises(WeightsError, match=r"missing keys: body\.0\.body\.0\.bias.*; unexpected keys: "
                                           r"loss\.vgg\.0\.weight, model\.add_mean\.bias") as info:
        build("edsr-small-x4", tmp_path / "loss.ckpt")
    assert "\n" not in str(info.value)
    torch.save(prefixed(PixelShuffleNet(4).state_dict(), "model."), tmp_path / "other.pt")
    with pytest.raises(WeightsError, match=r"unexpected keys: model\.conv1\.bias"):
        build("edsr-small-x4", tmp_path / "other.pt")


def test_stripped_files_report_wrong_shapes_by_the_models_names(tmp_path):
    torch.save(torch.nn.DataParallel(PixelShuffleNet(2)).state_dict(), tmp_path / "x2.pt")
    with pytest.raises(WeightsError, match=r"do not fit PixelShuffleNet: wrong shapes: conv4\.bias \(4,\) \(model "
                                           r"\(9,\)\), conv4\.weight \(4, 32, 3, 3\) \(model \(9, 32, 3, 3\)\)$"):
        build("pixelshuffle-x3", tmp_path / "x2.pt")


@pytest.mark.parametrize("layout", ["flat ema.", "model_ema.module.", "model_ema wrapper", "state_dict_ema wrapper"])
def test_ema_copies_win(tmp_path, layout):
    """Files holding the model and its EMA: the EMA copy loads, as params_ema does."""
    ema, plain = trained_edsr(1).state_dict(), trained_edsr(2).state_dict()
    obj = {"flat ema.": {**prefixed(plain, "model."), **prefixed(ema, "ema.")},
           "model_ema.module.": {"state_dict": {**prefixed(plain, "model."), **prefixed(ema, "model_ema.module.")}},
           "model_ema wrapper": {"model": plain, "model_ema": ema, "epoch": 300},
           "state_dict_ema wrapper": {"state_dict": plain, "state_dict_ema": ema}}[layout]
    torch.save(obj, tmp_path / "ema.pt")
    assert same_outputs(build("edsr-small-x4", tmp_path / "ema.pt"), trained_edsr(1))


def test_two_ema_copies_are_ambiguous(tmp_path):
    state = trained_edsr().state_dict()
    torch.save({**prefixed(state, "ema."), **prefixed(state, "model_ema.")}, tmp_path / "two.pt")
    with pytest.raises(WeightsError, match=r"unexpected keys: ema\.add_mean\.bias"):
        build("edsr-small-x4", tmp_path / "two.pt")


def test_safetensors_files_load_without_pickle(tmp_path):
    """A Hub .safetensors file loads whatever its name; one whose header size ends in byte 0x80 (a pickle's first
    byte) too; a damaged one fails in one line naming the format."""
    from safetensors.torch import save_file

    source = trained_edsr()
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    assert same_outputs(build("edsr-small-x4", tmp_path / "model.safetensors"), source)
    (tmp_path / "model.pt").write_bytes((tmp_path / "model.safetensors").read_bytes())
    assert same_outputs(build("edsr-small-x4", tmp_path / "model.pt"), source)
    torch.save(source.state_dict(), tmp_path / "torch.safetensors")  # a torch.save file under the other name
    assert same_outputs(build("edsr-small-x4", tmp_path / "torch.safetensors"), source)
    for pad in range(0, 256, 8):
        save_file(source.state_dict(), tmp_path / "x80.safetensors", metadata={"pad": "x" * pad})
        if (tmp_path / "x80.safetensors").read_bytes()[0] == 0x80:
            break
    assert (tmp_path / "x80.safetensors").read_bytes()[0] == 0x80
    assert same_outputs(build("edsr-small-x4", tmp_path / "x80.safetensors"), source)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(WeightsError, match=r"cut\.safetensors: not a valid safetensors file "
                                           r"\(SafetensorError: ") as info:
        build("edsr-small-x4", tmp_path / "cut.safetensors")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_half_precision_files_load_into_the_float32_model(tmp_path, dtype, fmt):
    """fp16 / bf16 weights: the model stays float32 and computes as the source rounded to that precision."""
    from safetensors.torch import save_file

    source = trained_edsr()
    half = {k: v.to(dtype) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    (torch.save if fmt == "torch" else save_file)(half, tmp_path / "half.bin")
    loaded = build("edsr-small-x4", tmp_path / "half.bin")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert same_outputs(loaded, source.to(dtype).float())


def test_profiler_counters_are_dropped(tmp_path):
    """thop's profile() leaves total_ops / total_params buffers in every module; they are not weights."""
    source = trained_edsr()
    counters = {f"{name}{'.' if name else ''}{c}": torch.zeros(1, dtype=torch.float64)
                for name, _ in source.named_modules() for c in ("total_ops", "total_params")}
    for prefix in ("", "module."):  # the counters go before a wrapper's prefix is stripped
        torch.save(prefixed({**source.state_dict(), **counters}, prefix), tmp_path / "thop.pt")
        assert same_outputs(build("edsr-small-x4", tmp_path / "thop.pt"), source), prefix


def test_checkpoints_with_python_objects_name_them(tmp_path):
    """A Lightning or argparse checkpoint with an object weights_only refuses: the line names its class."""
    import argparse

    torch.save({**lightning_checkpoint(trained_edsr().state_dict()), "args": argparse.Namespace(lr=1e-4)},
               tmp_path / "last.ckpt")
    with pytest.raises(WeightsError, match=r"holds pickled Python objects \(argparse\.Namespace\), not a plain state "
                                           r"dict; refusing to unpickle it \(pass --trust-pickle"):
        build("edsr-small-x4", tmp_path / "last.ckpt")


def test_a_dict_without_a_known_wrapper_lists_its_keys(tmp_path):
    state = trained_edsr().state_dict()
    torch.save({"generator": state, "discriminator": state, "epoch": 3}, tmp_path / "gan.pt")
    with pytest.raises(WeightsError, match=r"does not hold a state dict .*params_ema, params.*; it holds a dict of "
                                           r"discriminator, epoch, generator$"):
        build("edsr-small-x4", tmp_path / "gan.pt")


# --- the cache -----------------------------------------------------------------------------------------------------

def hashed_file(tmp_path, stem: str, state: dict, digits: int = 8):
    """Save ``state`` as ``<stem>-<sha256 prefix>.pth`` in a source folder, as torch hub names files."""
    staging = tmp_path / "staging.pth"
    torch.save(state, staging)
    digest = hashlib.sha256(staging.read_bytes()).hexdigest()
    source = tmp_path / "server"
    source.mkdir(exist_ok=True)
    path = source / f"{stem}-{digest[:digits]}.pth"
    staging.replace(path)
    return path


def test_fetch_downloads_verifies_and_reuses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    path = hashed_file(tmp_path, "net", {"w": torch.arange(5.0)})
    cached = wts.fetch(path.as_uri(), progress=False)
    assert cached == tmp_path / "cache" / path.name and cached.read_bytes() == path.read_bytes()
    path.unlink()  # offline from now on: the cached copy serves
    assert wts.fetch(path.as_uri(), progress=False) == cached
    cached.write_bytes(b"tampered")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        wts.fetch(path.as_uri(), progress=False)


def test_fetch_rejects_a_download_with_the_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    path = hashed_file(tmp_path, "net", {"w": torch.ones(3)})
    wrong = path.with_name("net-00000000.pth")
    path.rename(wrong)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        wts.fetch(wrong.as_uri(), progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_offline_error_names_the_url_and_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    url = (tmp_path / "nowhere" / "edsr_x4-4f62e9ef.pt").as_uri()
    cached = tmp_path / "cache" / "edsr_x4-4f62e9ef.pt"
    with pytest.raises(WeightsError, match=rf"cannot download {re.escape(url)} .*--weights PATH, or put it in the "
                                           rf"cache as {re.escape(str(cached))}$") as info:
        wts.fetch(url, progress=False)
    assert "\n" not in str(info.value)


def test_default_weights_come_from_a_prefilled_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path))
    state = fact_sheet_cyclegan(stale_instance_norm_keys=True)
    torch.save(state, tmp_path / "style_ukiyoe.pth")  # the name the official URL gives it
    model = build("cyclegan-style_ukiyoe")
    assert torch.equal(model.model[1].weight, state["model.1.weight"])
    (tmp_path / "edsr_baseline_x2-1bc95232.pt").write_bytes(b"not the official file")
    with pytest.raises(WeightsError, match="checksum mismatch"):
        build("edsr-baseline-x2")


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("LINTERP_CACHE", raising=False)
    assert str(wts.cache_dir()).endswith(".cache/linterp")
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path))
    assert wts.cache_dir() == tmp_path


def test_expected_sha256_follows_torch_hub_names():
    assert wts.expected_sha256("https://x/edsr_baseline_x4-6b446fab.pt") == "6b446fab"
    assert wts.expected_sha256("https://x/inception_v3_google-0cc3c7bd.pth") == "0cc3c7bd"
    assert wts.expected_sha256("http://x/style_vangogh.pth") is None
    assert wts.expected_sha256("http://x/a.pth", "ABC") == "abc"


# --- the project's trained defaults --------------------------------------------------------------------------------

def test_trained_default_is_verified_against_its_recorded_sha256(tmp_path, monkeypatch):
    source = build("digits-vgg", "random")
    torch.save(source.state_dict(), tmp_path / "digits-vgg.pt")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    digest = hashlib.sha256((tmp_path / "digits-vgg.pt").read_bytes()).hexdigest()
    monkeypatch.setitem(registry.TRAINED_SHA256, "digits-vgg", digest)
    assert same_weights(build("digits-vgg"), source)
    monkeypatch.setitem(registry.TRAINED_SHA256, "digits-vgg", "0" * 64)
    with pytest.raises(WeightsError, match="checksum mismatch"):
        build("digits-vgg")


@pytest.mark.parametrize("name", sorted(registry.TRAINED_SHA256))
def test_committed_trained_defaults_load_offline(name, monkeypatch, tmp_path):
    path = registry.WEIGHTS_DIR / f"{name}.pt"
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path))  # nothing cached, nothing downloaded
    assert registry.TRAINED_SHA256[name] == wts.file_sha256(path), "record the file's sha256 in TRAINED_SHA256"
    assert path.stat().st_size <= 10 * 10 ** 6  # committed weights: 10 MB at most
    build(name)


EXAMPLE_MODEL_PY = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, upscale_factor):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 64, 5, 1, 2)
        self.conv2 = nn.Conv2d(64, 64, 3, 1, 1)
        self.conv3 = nn.Conv2d(64, 32, 3, 1, 1)
        self.conv4 = nn.Conv2d(32, upscale_factor ** 2, 3, 1, 1)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)
'''


def test_a_trusted_pickle_of_the_examples_net_loads_without_its_module(tmp_path, monkeypatch):
    """pytorch/examples pickles `model.Net`; with --trust-pickle it loads although no `model` module exists here."""
    import importlib
    import sys

    (tmp_path / "model.py").write_text(EXAMPLE_MODEL_PY)
    sys.path.insert(0, str(tmp_path))
    try:
        example = importlib.import_module("model").Net(3)
        torch.save(example, tmp_path / "model_epoch_30.pth")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("model", None)
    with pytest.raises(WeightsError, match="--trust-pickle"):
        build("pixelshuffle-x3", tmp_path / "model_epoch_30.pth")
    loaded = build("pixelshuffle-x3", tmp_path / "model_epoch_30.pth", trust_pickle=True)
    assert torch.equal(loaded.conv4.weight, example.conv4.weight)
    assert "model" not in sys.modules
