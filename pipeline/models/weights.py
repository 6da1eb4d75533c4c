"""Weight files: download official files into a cache with checksums, read them safely, adapt and load them.

- ``fetch(url)``: the cached copy under ``cache_dir()`` (``$LINTERP_CACHE``, default ``~/.cache/linterp``), or a
  download (``http(s)://`` or ``file://``) verified against the sha256 prefix in the file name, as torch hub does
  (``name-<hex>.pth``), or against a full sha256 when one is known.
- ``read_state_dict(path)``: a ``torch.save`` file through ``torch.load(weights_only=True)`` (a pickled object is
  refused unless ``trust_pickle``) or a ``.safetensors`` file (no pickle at all), told apart by their first bytes
  (``FORMATS``); the state dict is taken out of the wrappers training code saves (``WRAPPERS``).
- ``load_weights(model, state)``: applies the key adapters (``ADAPTERS``: training wrappers' prefixes, EMA copies,
  profiler counters, old official files), then loads strictly; missing, unexpected or mis-shaped keys raise a
  one-line ``WeightsError`` that lists them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from pipeline.models.edsr import MeanShift

#: torch hub's rule: the part of the file name between the last '-' and the extension is a sha256 prefix.
HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.[A-Za-z0-9]+$")
#: What torch's weights-only unpickler says when a file is valid but holds Python objects beyond tensors; ``name``:
#: the first such class ("Unsupported global: GLOBAL argparse.Namespace was not…", older "Unsupported class …").
PICKLED_OBJECT = re.compile(r"Unsupported (?:global|class):? (?:GLOBAL )?(?P<name>[\w.]+)")
#: How many key names an error message lists before it says "and N more".
LISTED_KEYS = 8
#: How many bytes of a file ``FORMATS`` look at: a safetensors header's size (8) and its first character.
HEAD_BYTES = 9
#: safetensors' own bound on the size of a file's JSON header (``MAX_HEADER_SIZE``), in bytes.
SAFETENSORS_MAX_HEADER = 100_000_000


class WeightsError(ValueError):
    """A weight file cannot be found, fetched, read or loaded; the message is one line."""


def cache_dir() -> Path:
    """Where downloaded weight files are kept: ``$LINTERP_CACHE``, else ``~/.cache/linterp``."""
    return Path(os.environ.get("LINTERP_CACHE") or Path.home() / ".cache" / "linterp")


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_sha256(url: str, sha256: str | None = None) -> str | None:
    """The full sha256 when given, else the prefix in the file name (``…-6b446fab.pt``), else None."""
    if sha256:
        return sha256.lower()
    match = HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    return match.group(1) if match else None


def verify_sha256(path: Path, expected: str | None, origin: str) -> None:
    """Raise ``WeightsError`` unless the file's sha256 starts with ``expected`` (no check when None)."""
    if expected is None:
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise WeightsError(f"checksum mismatch for {origin}: sha256 {actual[:16]}… does not start with {expected}")


def fetch(url: str, sha256: str | None = None, progress: bool = True) -> Path:
    """The local path of the weight file at ``url``: the verified cached copy, or a fresh verified download.

    The download goes to ``<name>.part`` and is renamed when complete and verified, so an interrupted or corrupt
    download never poses as a cached file. Without a network the error names the URL, ``--weights PATH`` and the cache file.
    """
    name = url.rsplit("/", 1)[-1]
    target = cache_dir() / name
    expected = expected_sha256(url, sha256)
    if target.exists():
        verify_sha256(target, expected, str(target))
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(partial, "wb") as out:
            copy_with_progress(response, out, int(response.headers.get("Content-Length") or 0), name, progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        partial.unlink(missing_ok=True)
        reason = getattr(err, "reason", err)
        raise WeightsError(f"cannot download {url} ({reason}); download it yourself and pass --weights PATH, or "
                           f"put it in the cache as {target}") from err
    try:
        verify_sha256(partial, expected, url)
    except WeightsError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def copy_with_progress(src, dst, total: int, label: str, progress: bool) -> None:
    """Copy a binary stream in 1 MiB blocks, reporting bytes through ``pipeline.progress`` when ``progress``
    (``total``: the expected size in bytes, 0 when unknown)."""
    from pipeline.progress import progress as stage

    with stage(total or None, f"download {label}", unit="B", enabled=progress) as bar:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            bar.update(len(block))


def read_state_dict(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in a weight file, on the CPU, in the file's dtypes: a ``torch.save`` file or a safetensors
    file, whatever its name (``FORMATS``), unwrapped (``as_state_dict``).

    A ``torch.save`` file loads with ``weights_only=True``; one holding pickled objects (e.g. a whole ``nn.Module``)
    is refused unless ``trust_pickle``. A safetensors file holds tensors only and never runs a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    for looks_like, read in FORMATS:
        if looks_like(head):
            return as_state_dict(read(path, trust_pickle), path)
    raise WeightsError(f"cannot read weights file {path}: not a valid PyTorch checkpoint (neither a zip archive nor a "
                       f"pickle) nor a safetensors file")


def read_torch_file(path: Path, trust_pickle: bool):
    """What ``torch.save`` wrote in ``path``: ``torch.load(weights_only=True)``, or with ``trust_pickle`` an unpickling
    of the Python objects (``load_pickle``). Read from an open file: given a path, torch.load goes by the name and
    takes any ``*.safetensors`` for a safetensors file."""
    try:
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = PICKLED_OBJECT.search(str(err))
        if not refused:
            raise WeightsError(f"cannot read weights file {path}: not a valid PyTorch checkpoint "
                               f"(unreadable pickle data)") from err
        if not trust_pickle:
            raise WeightsError(f"{path} holds pickled Python objects ({refused['name']}), not a plain state dict; "
                               f"refusing to unpickle it (pass --trust-pickle only if you trust the file)") from err
        return load_pickle(path)
    except Exception as err:  # torch raises RuntimeError, EOFError, zipfile errors… for damaged files
        raise WeightsError(f"cannot read weights file {path}: not a valid PyTorch checkpoint "
                           f"({type(err).__name__}: {first_line(err)})") from err


def read_safetensors(path: Path, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (``trust_pickle`` is moot: the format holds no Python objects)."""
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as err:  # SafetensorError for a damaged header or data, OSError for a short read
        raise WeightsError(f"cannot read weights file {path}: not a valid safetensors file "
                           f"({type(err).__name__}: {first_line(err)})") from err


def looks_like_torch_file(head: bytes) -> bool:
    """True for torch.save's zip format and for the legacy format (a pickle of protocol 2 or later)."""
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def looks_like_safetensors(head: bytes) -> bool:
    """True for the safetensors layout: the header's size as a little-endian uint64, then its JSON object."""
    size = int.from_bytes(head[:8], "little")
    return len(head) == HEAD_BYTES and head[8:9] == b"{" and 2 <= size <= SAFETENSORS_MAX_HEADER


#: Weight file formats: (test of the first ``HEAD_BYTES`` bytes, reader of (path, trust_pickle)), the first that
#: passes reads the file. safetensors goes first: its test is the stricter (a header size whose low byte is 0x80
#: would pass for a pickle), and no torch.save file has a '{' at byte 8.
FORMATS = ((looks_like_safetensors, read_safetensors), (looks_like_torch_file, read_torch_file))


#: Classes of known pickled checkpoints whose defining module is not importable here -> our equivalent class.
#: pytorch/examples' super_resolution/main.py pickles its whole `model.Net` (same attributes as PixelShuffleNet).
PICKLED_CLASSES = {("model", "Net"): ("pipeline.models.pixelshuffle", "PixelShuffleNet")}


class _MappingUnpickler(pickle.Unpickler):
    """An unpickler that resolves the classes in ``PICKLED_CLASSES`` to ours."""

    def find_class(self, module, name):
        return super().find_class(*PICKLED_CLASSES.get((module, name), (module, name)))


class _MappingPickle:
    """The ``pickle_module`` torch.load uses for trusted files: the standard module with our unpickler."""

    Unpickler = _MappingUnpickler
    load = staticmethod(lambda file, **kwargs: _MappingUnpickler(file, **kwargs).load())
    __name__ = "pickle"


def load_pickle(path: Path):
    """Unpickle a trusted file (known upstream classes mapped to ours); a missing class becomes a one-line error."""
    try:
        with open(path, "rb") as f:  # an open file, as in read_torch_file
            return torch.load(f, map_location="cpu", weights_only=False, pickle_module=_MappingPickle)  # trusted
    except Exception as err:
        raise WeightsError(f"cannot unpickle {path}: {type(err).__name__}: {first_line(err)}") from err


#: Keys under which training code saves a state dict, in order of preference: an EMA copy before the plain one, as
#: BasicSR / Real-ESRGAN / SwinIR's own inference scripts take ``params_ema`` when present ("prefer to use
#: params_ema", realesrgan/utils.py), and timm's ``state_dict_ema``, DeiT-style ``model_ema`` alike; ``state_dict`` also
#: holds Lightning's weights beside its ``epoch``, ``optimizer_states``, ….
WRAPPERS = ("params_ema", "params", "state_dict_ema", "state_dict", "model_ema", "model")


def as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """A dict of tensors from a loaded object: a state dict, the first of ``WRAPPERS`` that holds one (nested
    wrappers too), or a whole module."""
    if isinstance(obj, nn.Module):
        return as_state_dict(obj.state_dict(), path)
    if isinstance(obj, Mapping):
        for wrapper in WRAPPERS:
            if isinstance(obj.get(wrapper), (Mapping, nn.Module)):
                return as_state_dict(obj[wrapper], path)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        holds = f"a dict of {listed(map(str, obj))}" if isinstance(obj, Mapping) and obj else type(obj).__name__
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors, alone or under one of "
                           f"{', '.join(WRAPPERS)}); it holds {holds}")
    return {str(k): v for k, v in obj.items()}


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# -- key adapters: each takes (model, state) and returns the state, adapted when the rule applies --------------

#: The buffers thop's ``profile`` adds to every module (``total_ops``, ``total_params``), saved along by many repos.
PROFILER_COUNTERS = ("total_ops", "total_params")
#: A first key component that names an EMA copy of the model: ``ema``, ``model_ema``, ``ema_model``, ``net_g_ema``….
EMA_NAME = re.compile(r"(?:^|_)ema(?:_|$)", re.IGNORECASE)


def drop_profiler_counters(model: nn.Module, state: dict) -> dict:
    """Drop the ``total_ops`` / ``total_params`` counters of thop's profiler where the model has no such key."""
    own = model.state_dict()
    return {k: v for k, v in state.items() if k in own or k.rpartition(".")[2] not in PROFILER_COUNTERS}


def unprefixed(state: dict, own) -> dict | None:
    """``state`` without the shortest run of leading key components that EVERY key shares and whose removal leaves
    only keys of ``own`` (e.g. ``module.``, ``_orig_mod.``, ``module._orig_mod.``); None when there is none."""
    parts = [k.split(".") for k in state]
    shared = 0
    while all(len(p) > shared + 1 and p[shared] == parts[0][shared] for p in parts):
        shared += 1
        stripped = {".".join(p[shared:]): v for p, v in zip(parts, state.values())}
        if stripped.keys() <= own:
            return stripped
    return None


def take_ema_copy(model: nn.Module, state: dict) -> dict:
    """Keep only the EMA copy of a file that holds the model twice (training code saving ``model.…`` and
    ``ema.…`` / ``model_ema.module.…`` together): the keys under the one EMA-named first component (``EMA_NAME``),
    when they are the model's keys under a prefix (``unprefixed``). As ``WRAPPERS``, the EMA copy wins."""
    own = model.state_dict().keys()
    if state.keys() <= own:
        return state
    groups: dict[str, dict] = {}
    for key, value in state.items():
        groups.setdefault(key.split(".", 1)[0], {})[key] = value
    ema = [g for name, g in groups.items() if EMA_NAME.search(name)]
    if len(groups) > 1 and len(ema) == 1 and unprefixed(ema[0], own) is not None:
        return ema[0]
    return state


def strip_wrapper_prefix(model: nn.Module, state: dict) -> dict:
    """Strip what training wrappers put before every key: ``module.`` (DataParallel, DistributedDataParallel),
    ``_orig_mod.`` (torch.compile), the LightningModule's attribute (``model.``, ``net.``…). Only when every key has
    the prefix, the keys as they are do not all fit the model and the stripped keys do (``unprefixed``)."""
    own = model.state_dict().keys()
    if state.keys() <= own:
        return state
    return unprefixed(state, own) or state


def add_wrapper_prefix(model: nn.Module, state: dict) -> dict:
    """torchvision files lack the ``net.`` prefix of our ImageNet wrapper (``classifiers.ImageNetClassifier``)."""
    own = model.state_dict()
    if own and all(k.startswith("net.") for k in own) and not any(k.startswith("net.") for k in state):
        return {"net." + k: v for k, v in state.items()}
    return state


#: torchvision's own legacy rule (densenet._load_state_dict): 'denselayer1.norm.1.weight' -> 'denselayer1.norm1.weight'.
DENSENET_LEGACY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                             r"running_var))$")


def rename_densenet_legacy(model: nn.Module, state: dict) -> dict:
    """Rename the legacy DenseNet keys of the official files to the current layer names."""
    renamed = {}
    for key, value in state.items():
        match = DENSENET_LEGACY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def drop_instance_norm_stats(model: nn.Module, state: dict) -> dict:
    """Drop the running statistics that 2018 CycleGAN files carry for InstanceNorm layers that track none.

    As the official loader does: a ``running_mean``/``running_var`` key goes when the live InstanceNorm has no such
    buffer, a ``num_batches_tracked`` key under an InstanceNorm always goes.
    """
    modules = dict(model.named_modules())
    kept = {}
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (
                leaf == "num_batches_tracked" or (leaf in ("running_mean", "running_var")
                                                  and getattr(module, leaf, None) is None)):
            continue
        kept[key] = value
    return kept


def rebuild_mean_shift(model: nn.Module, state: dict) -> dict:
    """Fill in EDSR MeanShift keys a file lacks, from the model's own (fixed, non-trainable) constants."""
    filled = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, MeanShift):
            for leaf, tensor in module.state_dict().items():
                filled.setdefault(f"{name}.{leaf}", tensor)
    return filled


def fill_batch_norm_counters(model: nn.Module, state: dict) -> dict:
    """Add the ``num_batches_tracked`` counters that files saved before PyTorch 0.4.1 lack (unused in eval mode)."""
    filled = dict(state)
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.num_batches_tracked is not None:
            filled.setdefault(f"{name}.num_batches_tracked", module.num_batches_tracked.clone())
    return filled


#: Applied in this order to every file before the strict load; each rule only acts where the model calls for it.
ADAPTERS: tuple[Callable[[nn.Module, dict], dict], ...] = (
    drop_profiler_counters, take_ema_copy, strip_wrapper_prefix, add_wrapper_prefix, rename_densenet_legacy,
    drop_instance_norm_stats, rebuild_mean_shift, fill_batch_norm_counters,
)


def _lazy(t: torch.Tensor) -> bool:
    """A lazy layer's parameter that does not exist yet: loading gives it the file's shape."""
    return isinstance(t, nn.parameter.UninitializedTensorMixin)


def listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return ", ".join(keys[:LISTED_KEYS]) + more


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], origin: str = "weights") -> nn.Module:
    """Adapt ``state`` with ``ADAPTERS`` and load it strictly into ``model`` (in place; returns the model)."""
    state = dict(state)
    for adapter in ADAPTERS:
        state = adapter(model, state)
    own = model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listed(unexpected)}")
    wrong = [f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
             for k in sorted(own.keys() & state.keys())
             if not _lazy(own[k]) and own[k].shape != state[k].shape]
    if wrong:
        problems.append(f"wrong shapes: {listed(wrong)}")
    if problems:
        raise WeightsError(f"{origin} do not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model

