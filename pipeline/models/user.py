"""Models of the user's own: ``FILE.py:FACTORY`` or ``package.module:FACTORY``, rebuilt on any worker.

``FACTORY(**model_args)`` is any callable of the file or module (a function, a class) that returns a
``torch.nn.Module``. linterp runs it the way ``python FILE.py`` would run the file (the user chose to run that
code); weight files still load with ``weights_only=True`` unless ``trust_pickle`` (``.safetensors`` files never
unpickle), as training code saved them (``weights.read_state_dict``, ``weights.ADAPTERS``).

- ``parse_spec(text, args)`` -> ``UserSpec``: small, frozen and picklable. It holds where the code is (the file's
  absolute path, or the module's name and the folder it imports from) only in memory, and the sha256 of the
  file, so that a worker process (local or on a ``tcp://`` cluster sharing the file system) reads the file by
  path and refuses it when it changed.
- ``build(spec, weights, trust_pickle, state_sha256)``: the model in eval mode, its factory run from the fixed
  seed 0 (as the registry does), the weights loaded strictly (key errors listed); with ``state_sha256`` the
  built parameters must digest to that value (``state_digest``), so every worker holds the same model. A model
  in float64, float16 or bfloat16 is converted to float32 after that check (``float32``), as module objects are.
- ``infer(model, img, value_range, name)`` -> ``ModelSpec``: what linterp needs, from a probe forward pass on the
  image: input channels (3 = RGB, 1 = Y of an RGB image or a grey image), task (an image of the input's size:
  "i2i"; an integer multiple of it: "sr" with that scale; a vector (1, N): "classify"). The input value range
  cannot be inferred: the user gives it (``DEFAULT_INPUT_RANGE`` otherwise).
- ``record`` / ``locate``: the store records the spec by file name, factory, arguments and digests (never a
  path); ``locate`` finds the code again for ``svd --from-model`` and ``verify``: the file given, else one of
  that name in the current folder, refused when its sha256 differs.

Every error is a ``UserModelError`` (a ``ValueError``) with a one-line message.
"""
from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import importlib
import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.interpreter.graph import uninitialised
from pipeline.models import weights as wts
from pipeline.models.registry import ModelSpec

#: Input value ranges a user can choose (``--input-range``): pixel values 0 and 255 map to (lo, hi).
INPUT_RANGES = {"0,1": (0.0, 1.0), "0,255": (0.0, 255.0), "-1,1": (-1.0, 1.0)}
#: The range assumed when none is given: most PyTorch image models take [0, 1].
DEFAULT_INPUT_RANGE = "0,1"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class UserModelError(ValueError):
    """A user model spec that cannot be loaded, built or used; the message is one line."""


class ProbeError(UserModelError):
    """A user model that fails on the probe input (``infer``): wrong channels, or a size it does not take."""


def is_user_spec(text: str) -> bool:
    """True for ``FILE.py:FACTORY`` / ``package.module:FACTORY`` (registry names never hold a colon)."""
    return ":" in str(text)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


@dataclass(frozen=True)
class UserSpec:
    """A user model: ``kind`` "file" (``location`` = absolute path of the .py file) or "module" (``location`` =
    dotted module name, importable from the folder ``root``); ``factory`` (dotted attribute path in it), ``args``
    (sorted keyword pairs), ``path`` and ``sha256`` of the file that holds the factory's module."""

    kind: str
    location: str
    factory: str
    args: tuple = ()
    sha256: str = ""
    root: str | None = None
    path: str = ""

    @property
    def file_name(self) -> str:
        return Path(self.location).name if self.kind == "file" else self.location

    @property
    def label(self) -> str:
        """The spec as stores and sites name it: ``file.py:factory`` (no folders) or ``package.module:factory``."""
        return f"{self.file_name}:{self.factory}"

    @property
    def call(self) -> str:
        """``factory(key=value, …)``, for messages."""
        return f"{self.factory}({', '.join(f'{k}={v!r}' for k, v in self.args)})"

    def record(self, state_sha256: str) -> dict:
        """The store's ``model_spec`` attribute: how to find and rebuild the model, without any path."""
        out = {"kind": self.kind, "factory": self.factory, "args": dict(self.args),
               "file": {"name": Path(self.path).name, "sha256": self.sha256},
               "state_sha256": state_sha256}
        if self.kind == "module":
            out["module"] = self.location
        return out


# ---- parsing -------------------------------------------------------------------------------------------

def parse_args(pairs) -> dict:
    """``["features=32", "act=leaky"]`` -> ``{"features": 32, "act": "leaky"}``: values are Python literals
    (numbers, True/False/None, quoted strings, tuples, lists) or else plain strings."""
    out = {}
    for pair in pairs or ():
        key, sep, value = str(pair).partition("=")
        key = key.strip()
        if not sep or not _NAME.fullmatch(key):
            raise UserModelError(f"--model-arg {pair!r} is not KEY=VALUE with KEY a Python name")
        if key in out:
            raise UserModelError(f"--model-arg {key} is given twice")
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key] = value.strip()
    return out


def input_range(text) -> tuple[float, float]:
    """``"0,1"`` / ``"0,255"`` / ``"-1,1"`` (or a (lo, hi) pair) -> (lo, hi); None gives the default."""
    if text is None:
        text = DEFAULT_INPUT_RANGE
    if isinstance(text, (tuple, list)) and len(text) == 2:
        return float(text[0]), float(text[1])
    key = str(text).replace(" ", "")
    try:  # the same numbers written otherwise: "0.0,1.0", "-1.,1"
        pair = tuple(float(v) for v in key.split(","))
    except ValueError:
        pair = None
    if key not in INPUT_RANGES and pair not in INPUT_RANGES.values():
        raise UserModelError(f"input range {text!r} is not one of {' | '.join(INPUT_RANGES)}")
    return INPUT_RANGES.get(key, pair)


def parse_spec(text: str, args: dict | None = None) -> UserSpec:
    """``FILE.py:FACTORY`` or ``package.module:FACTORY`` (+ keyword ``args``) -> ``UserSpec``.

    A part before the colon that ends in ``.py`` or holds a folder separator is a file (relative to the current
    folder); anything else is a module, imported as ``python -c "import package.module"`` would from the current
    folder. Raises ``UserModelError`` when the file or module is not found or FACTORY is not a Python name.
    """
    where, sep, factory = str(text).rpartition(":")
    if not sep or not where or not factory:
        raise UserModelError(f"model spec {text!r} is not FILE.py:FACTORY or package.module:FACTORY")
    if not all(_NAME.fullmatch(p) for p in factory.split(".")):
        raise UserModelError(f"model spec {text!r}: {factory!r} is not the name of a Python callable")
    pairs = tuple(sorted((args or {}).items()))
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise UserModelError(f"model file {where} not found" + (" (it is a folder)" if path.is_dir() else ""))
        return UserSpec("file", str(path.resolve()), factory, pairs, wts.file_sha256(path), None, str(path.resolve()))
    if not all(_NAME.fullmatch(p) for p in where.split(".")):
        raise UserModelError(f"model spec {text!r}: {where!r} is neither a .py file nor a module name")
    origin, root = _find_module(where)
    return UserSpec("module", where, factory, pairs, wts.file_sha256(origin), root, str(origin))


def _find_module(name: str) -> tuple[Path, str]:
    """(source file, the sys.path folder it imports from) of module ``name``, importing from the current folder
    too. Raises ``UserModelError`` when it cannot be found or has no source file."""
    _on_path(os.getcwd())
    try:
        found = importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:  # a missing parent package, or a failing package __init__
        raise UserModelError(f"module {name} not found ({_first_line(err)})") from None
    except Exception as err:  # noqa: BLE001 - the package's own code raised while it was imported
        raise UserModelError(f"module {name}: importing its package raised {_first_line(err)}") from None
    if found is None:
        raise UserModelError(f"module {name} not found (looked in the current folder and on the Python path)")
    if not found.origin or not Path(found.origin).is_file():
        raise UserModelError(f"module {name} has no source file (linterp records the sha256 of the file)")
    origin = Path(found.origin).resolve()
    depth = name.count(".") + (1 if origin.name == "__init__.py" else 0)
    return origin, str(origin.parents[depth])


def _on_path(folder: str) -> None:
    if folder not in sys.path:
        sys.path.insert(0, folder)


# ---- loading and building ------------------------------------------------------------------------------

def _changed(spec: UserSpec, now: str) -> UserModelError:
    return UserModelError(f"model file {spec.file_name} has changed (sha256 {now[:12]}…, expected "
                          f"{spec.sha256[:12]}…); restore it, or start again with another --out")


def load_module(spec: UserSpec):
    """The module that holds the factory, its file checked against ``spec.sha256``.

    A file is imported under a name made of its stem and digest (so a changed file is a new module) with its
    folder on ``sys.path``, as ``python FILE.py`` would; a module is imported from ``spec.root``.
    """
    if spec.kind == "module":
        _on_path(spec.root)
        try:
            module = importlib.import_module(spec.location)
        except Exception as err:  # noqa: BLE001 - any error of the user's code: one line
            raise UserModelError(f"module {spec.location} failed to import: {_first_line(err)}") from None
        now = wts.file_sha256(module.__file__)
        if now != spec.sha256:
            raise _changed(spec, now)
        return module
    path = Path(spec.location)
    if not path.is_file():
        raise UserModelError(f"model file {path} not found")
    now = wts.file_sha256(path)
    if now != spec.sha256:
        raise _changed(spec, now)
    name = "linterp_user_" + re.sub(r"\W", "_", path.stem) + "_" + spec.sha256[:16]
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader)
    _on_path(str(path.parent))
    sys.modules[name] = module  # before running it: dataclasses and pickling look classes up there
    try:
        loader.loader.exec_module(module)
    except Exception as err:  # noqa: BLE001 - any error of the user's code: one line
        del sys.modules[name]
        at = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
        raise UserModelError(f"model file {path.name} failed to import{at}: {_first_line(err)}") from None
    return module


def factory_of(spec: UserSpec):
    """The callable ``spec.factory`` of the spec's module (``UserModelError`` naming close names if absent)."""
    module = load_module(spec)
    target = module
    for part in spec.factory.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_") and callable(getattr(target, n, None))]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserModelError(f"{spec.file_name} has no callable '{spec.factory}'{hint}")
        target = getattr(target, part)
    if not callable(target):
        raise UserModelError(f"{spec.label} is a {type(target).__name__}, not a callable that returns a module")
    return target


def instantiate(spec: UserSpec, weights=None, trust_pickle: bool = False) -> nn.Module:
    """``FACTORY(**args)`` run from the fixed seed 0, in eval mode, with the state dict of ``weights`` (a path, or
    None / "random" for the factory's own parameters) loaded strictly: the model as the factory and the weights
    make it, in their precision (``build`` gives it in float32)."""
    factory = factory_of(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = factory(**dict(spec.args))
        except Exception as err:  # noqa: BLE001 - the factory is the user's code: its message, one line
            raise UserModelError(f"{spec.file_name}: {spec.call} raised {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise UserModelError(f"{spec.file_name}: {spec.call} returned {type(model).__name__}, "
                             f"not a torch.nn.Module")
    if weights is not None and str(weights) != "random":
        wts.load_weights(model, wts.read_state_dict(weights, trust_pickle), f"weights {Path(weights).name}")
    return model.eval()


def state_digest(model: nn.Module) -> str:
    """sha256 of a module's state: every parameter and buffer by name, dtype, shape and bytes. A lazy layer
    without parameters yet is refused (`UserModelError`, naming it)."""
    if (why := uninitialised(model)) is not None:
        raise UserModelError(why)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def build(spec: UserSpec, weights=None, trust_pickle: bool = False, state_sha256: str | None = None) -> nn.Module:
    """The user model in eval mode and in float32 (``float32``): ``instantiate(spec, weights, trust_pickle)``,
    checked against ``state_sha256`` (the digest of the model as instantiated, before any conversion) when given."""
    model = instantiate(spec, weights, trust_pickle)
    if state_sha256 is not None and state_digest(model) != state_sha256:
        raise UserModelError(f"{spec.label} built here differs from the model the run started with (state "
                             f"sha256 {state_digest(model)[:12]}…, expected {state_sha256[:12]}…): does "
                             f"{spec.factory}() depend on chance, the clock or other files?")
    return float32(model)


def float32(model: nn.Module) -> nn.Module:
    """``model`` in float32, the precision of x0 and of the store: one with floating-point parameters or buffers
    in another precision (float64, float16, bfloat16) is converted in place; a float32 one is returned as it is.
    The models of specs (``build``) and the copies of module objects (``ModuleCopy``) both go through here; their
    ``state_sha256`` stays the digest of the model before the conversion."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in tensors):
        model = model.float()
    return model


@dataclass(frozen=True, eq=False)
class ModuleCopy:
    """The builder of a module object (Python API): each call returns a deep copy in eval mode and in float32
    (``float32``), checked against the digest of the original (before the conversion). Other processes get it
    pickled by value (cloudpickle), so its class must be importable there or defined in ``__main__`` / a
    notebook."""

    module: nn.Module
    state_sha256: str

    def __call__(self) -> nn.Module:
        model = copy.deepcopy(self.module).eval()
        if state_digest(model) != self.state_sha256:
            raise UserModelError(f"the copy of {type(self.module).__name__} differs from the module given "
                                 f"(state sha256): was it changed while the run went on?")
        return float32(model)


def pickle_by_value(module: nn.Module) -> list[str]:
    """Have cloudpickle send the code of the user's own classes in ``module`` with it (not a reference that
    another process would have to import): every class whose Python module lies outside the installed packages
    and the standard library (a notebook, a file next to it, a file loaded by ``load_module``). Returns the
    names of those modules."""
    import cloudpickle
    import sysconfig

    installed = {Path(p).resolve() for key in ("stdlib", "platstdlib", "purelib", "platlib")
                 if (p := sysconfig.get_paths().get(key))}
    own = Path(__file__).resolve().parents[1]  # linterp's own package is importable wherever it runs
    chosen = []
    for name in sorted({type(m).__module__ for m in module.modules()}):
        found = sys.modules.get(name)
        file = getattr(found, "__file__", None)
        if found is None or name == "__main__" or not file:
            continue  # __main__ and interactive classes go by value anyway
        path = Path(file).resolve()
        if any(path.is_relative_to(p) for p in installed | {own}):
            continue
        cloudpickle.register_pickle_by_value(found)
        chosen.append(name)
    return chosen


# ---- what linterp needs to know, from a probe ----------------------------------------------------------

def _task(x: torch.Tensor, y) -> tuple[str, int]:
    """(task, scale) from an input (1, C, H, W) and the model's output on it."""
    shown = f"input {tuple(x.shape)}"
    if not isinstance(y, torch.Tensor):
        raise UserModelError(f"the model returns {type(y).__name__} on the {shown}, not a tensor: linterp needs "
                             f"one output, an image (1, C, H, W) or class scores (1, N)")
    h, w = x.shape[-2:]
    if y.dim() == 2 and y.shape[0] == 1:
        return "classify", 1
    if y.dim() == 4 and y.shape[0] == 1:
        ho, wo = y.shape[-2:]
        if (ho, wo) == (1, 1) and (h, w) != (1, 1):
            return "classify", 1
        if ho % h == 0 and wo % w == 0 and ho // h == wo // w:
            scale = ho // h
            return ("sr" if scale > 1 else "i2i"), scale
    hint, s = "", round(y.shape[-1] / w) if y.dim() == 4 else 0
    if y.dim() == 4 and s >= 1 and y.shape[-2] >= s * h and y.shape[-1] >= s * w:
        # a little larger than a multiple: strided layers that round odd sides up (a 7×5 input giving 8×6)
        hint = ("; its sides are almost a multiple of the input's: a network with strided layers may need sides "
                "that are multiples of its total stride (--crop X,Y,W,H with W and H divisible by 4 or 8)")
    elif y.dim() == 4 and (y.shape[-2] < h or y.shape[-1] < w):
        hint = ("; it is smaller than the input: convolutions without padding or downscaling layers (linterp maps "
                "input pixels to output pixels of the same place: pad the convolutions, padding='same', or scale "
                "the output back up)")
    raise UserModelError(f"output {tuple(y.shape)} on the {shown} is neither an image (1, C, H, W) of the "
                         f"input's size or an integer multiple of it, nor class scores (1, N){hint}")


def infer(model: nn.Module, img, value_range, name: str, factory=None) -> ModelSpec:
    """The ``ModelSpec`` of a user model, from probe passes on ``img`` (uint8 (H, W, 1 or 3)).

    ``factory``: what the spec's ``factory`` field holds (a zero-argument builder; default the model's class).
    Channels: the first of 3 (RGB) and 1 (Y of an RGB image, or a grey image) that the model accepts, trying
    the image's own count first; a grey image for a 3-channel model raises ``ImageError``, a model that fails on
    both ``ProbeError``. Task and scale come from the output's shape (see ``_task``).
    """
    import numpy as np

    from pipeline import images

    lo, hi = value_range
    rgb = img.shape[2] == 3
    failures = []
    for channels in ((3, 1) if rgb else (1, 3)):
        colour = "rgb" if channels == 3 else ("y" if rgb else "gray")
        probe_img = img if rgb or channels == 1 else np.repeat(img, 3, axis=2)
        spec = ModelSpec(name, "", 1, colour, (lo, hi), f"user model {name}", factory or type(model))
        x = images.to_input(probe_img, spec)
        try:
            with torch.no_grad():
                y = model(x)
        except Exception as err:  # noqa: BLE001 - the user's forward: its message, one line
            failures.append(f"on a {'×'.join(map(str, x.shape))} input: {_first_line(err)}")
            continue
        task, scale = _task(x, y)
        if channels == 3 and not rgb:
            raise images.needs_rgb(name)
        return ModelSpec(name, task, scale, colour, (lo, hi), spec.description, spec.factory)
    raise ProbeError(f"{name} fails {failures[0]}")


# ---- finding a model again from a store's record ------------------------------------------------------

def locate(record: dict, label: str, given=None) -> UserSpec:
    """The ``UserSpec`` of a store's ``model_spec`` record, its file found again and checked.

    ``given``: what the user names now (``FILE.py[:FACTORY]`` or ``package.module[:FACTORY]``, or None: a file
    of the recorded name in the current folder, or the recorded module). The recorded factory and arguments
    are used; a file whose sha256 differs from the recorded one is refused (one line).
    """
    kind, factory = record.get("kind"), record.get("factory")
    file = record.get("file") or {}
    if kind == "object":
        raise UserModelError(f"the store was computed from a module object ({label}), which has no file to "
                             f"rebuild it from: pass the module as model= (verify_store, svd_store, …)")
    if kind not in ("file", "module") or not factory:
        raise UserModelError(f"the store's model_spec is not one linterp reads: {record!r}")
    args = tuple(sorted((record.get("args") or {}).items()))
    if given is not None:
        where, sep, named = str(given).rpartition(":")
        if not sep:  # a file or module without its factory: the recorded one
            where, named = str(given), factory
        if named != factory:
            raise UserModelError(f"the store was computed with factory {factory}, not {named}")
        spec = parse_spec(f"{where}:{factory}")
    elif kind == "file":
        here = Path(file.get("name") or "")
        if not here.name or not here.is_file():
            raise UserModelError(f"the store was computed with model file {file.get('name')} (sha256 "
                                 f"{str(file.get('sha256'))[:12]}…), which is not in the current folder: "
                                 f"pass --model PATH/{file.get('name')}:{factory}")
        spec = parse_spec(f"{here}:{factory}")
    else:
        spec = parse_spec(f"{record.get('module')}:{factory}")
    if file.get("sha256") and spec.sha256 != file["sha256"]:
        raise UserModelError(f"{spec.file_name} has changed since the store was computed (sha256 "
                             f"{spec.sha256[:12]}…, recorded {file['sha256'][:12]}…); restore it or compute "
                             f"a new store")
    return UserSpec(spec.kind, spec.location, factory, args, spec.sha256, spec.root, spec.path)

