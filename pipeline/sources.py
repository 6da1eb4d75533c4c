"""The inputs of a store: a model with its weights and an image with its crop, in both directions.

- ``model_source(name, weights, trust_pickle, image_path, crop)`` turns what a user names into what
  ``pipeline.compute`` needs: a picklable ``Source`` (model builder + x0), the ``identity`` a resumed store must
  match, and the store attributes that name the inputs portably (``FileRef``: file name + sha256, never a path).
- ``model_from_store(store, weights)`` goes back: the model a store was computed from, its weight file found
  again by name and sha256 (the file given, the registry's default file, or the weight cache), never through a
  path that only the machine that computed the store had.

The model is a registry name or the user's own (``FILE.py:FACTORY`` / ``package.module:FACTORY``, see
``pipeline.models.user``); ``module_source`` does the same for a module object (the Python API).
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.compute import Source, source_key
from pipeline.store import FileRef

#: The ``weights`` name and digest recorded for a seeded random initialisation (``--weights random``).
RANDOM = "random"


def file_ref(path) -> FileRef:
    """A file as the store records it: its base name and the sha256 of its bytes."""
    from pipeline.models.weights import file_sha256

    return FileRef(Path(path).name, file_sha256(path))


def weights_ref(name: str, weights=None) -> tuple[FileRef, str | None]:
    """(the record, what ``models.build`` takes) for ``weights`` of registry model ``name``.

    ``weights``: None (the model's default file: the project's, or the official one fetched into the weight
    cache), "random", or the path of a weight file. Returns (FileRef, absolute path | "random" | None); a model
    without parameters gives (FileRef(None, None), None).
    """
    from pipeline.models import spec
    from pipeline.models.registry import NO_PARAMETERS, default_weights_path

    model_spec = spec(name)
    if weights is not None and str(weights) == RANDOM:
        return FileRef(RANDOM, RANDOM), RANDOM
    if weights is None and model_spec.weights == NO_PARAMETERS:
        return FileRef(), None
    path = default_weights_path(model_spec) if weights is None else Path(weights).resolve()
    return file_ref(path), str(path)


def read_image(image=None, crop=None) -> tuple[np.ndarray, FileRef, tuple[int, int, int, int] | None]:
    """(uint8 (H, W, C) pixels, the image's record, the crop box or None).

    ``image``: an image file, an array (H, W[, C]) of uint8, of other integers in 0..255 or of floats in 0..1
    (recorded as "array" with the sha256 of its uint8 pixels), a PIL image, or None for the built-in default image
    (recorded by its label and the sha256 of its uint8 pixels); ``crop``: "X,Y,W,H" or (x, y, w, h) (pixels) or
    None. Raises ``ImageError`` (one line) for anything else.
    """
    from pipeline import images

    if image is None:
        label, img = images.default_image()
        ref = FileRef(label, hashlib.sha256(img.tobytes()).hexdigest())
    elif isinstance(image, (str, bytes, Path)) or hasattr(image, "__fspath__"):
        img, ref = images.load_image(image), file_ref(image)
    else:
        img = images.as_uint8_image(_pixels(image), "the image array")
        ref = FileRef("array", hashlib.sha256(img.tobytes()).hexdigest())
    box = images.parse_crop(_crop_text(crop)) if crop is not None else None
    if box:
        img = images.crop(img, box)
    return img, ref, box


def _pixels(image) -> np.ndarray:
    """An image given as an object (``read_image``) as an array (H, W[, C]) that ``images.as_uint8_image`` reads:
    PIL images converted, integer samples in 0..255 as uint8; other objects, channels-first arrays and floats
    outside 0..1 refused in one line that says what to give instead."""
    from pipeline.images import ImageError

    if hasattr(image, "getbands") and hasattr(image, "convert"):  # a PIL image
        image = np.asarray(image if image.mode in ("1", "L", "LA", "RGB", "RGBA") else image.convert("RGBA"))
    if not isinstance(image, np.ndarray):
        cls = type(image)
        kind = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        raise ImageError(f"the image is a {kind}: give a numpy array (H, W[, C]) of uint8 or of floats in 0..1 "
                         f"(a (C, H, W) tensor t: t.permute(1, 2, 0).numpy()), an image file or None")
    shape = image.shape
    if image.ndim == 3 and shape[0] in (1, 2, 3, 4) and shape[2] > 4:
        raise ImageError(f"the image array has shape {shape}, channels first; give (H, W, C): "
                         f"image.transpose(1, 2, 0)")
    if image.size and np.issubdtype(image.dtype, np.floating) and np.isfinite(image).all():
        low, high = float(image.min()), float(image.max())
        if not -0.5 / 255 <= low <= high <= 1 + 0.5 / 255:
            hint = "image / 255" if low >= 0 and high <= 255.5 else "its values rescaled"
            raise ImageError(f"the image array holds floats from {low:g} to {high:g}, not in 0..1: give uint8 "
                             f"pixels or floats in 0..1 ({hint})")
    if image.size and np.issubdtype(image.dtype, np.integer) and image.dtype not in (np.uint8, np.uint16):
        low, high = int(image.min()), int(image.max())
        if not 0 <= low <= high <= 255:
            raise ImageError(f"the image array holds {image.dtype} samples from {low} to {high}, not in 0..255: "
                             f"give uint8 pixels (uint16 for 16-bit samples) or floats in 0..1")
        image = image.astype(np.uint8)
    return image


def _crop_text(crop) -> str:
    """A crop given as "X,Y,W,H" or as a sequence (x, y, w, h) of integers, as the text ``images.parse_crop``
    reads."""
    from pipeline.images import ImageError

    if isinstance(crop, str):
        return crop
    if isinstance(crop, (tuple, list, np.ndarray)) and len(crop) == 4 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in crop):
        return ",".join(str(int(v)) for v in crop)
    raise ImageError(f"crop {crop!r} is not \"X,Y,W,H\" nor (x, y, w, h): four non-negative integers, e.g. "
                     f"(10, 20, 64, 64)")


def _assemble(model_spec, builder, image: tuple, weights: FileRef, identity: dict | None = None,
              attrs: dict | None = None) -> tuple[Source, dict, dict]:
    """(Source, identity, attrs) of a model (``ModelSpec`` + picklable zero-argument ``builder``) at ``image``
    (``read_image``'s triple), with further identity keys and attributes of its kind."""
    from pipeline import images

    img, image_ref, box = image
    x0 = images.to_input(img, model_spec).numpy()
    crop_list = list(box) if box else None
    ident = {"model": model_spec.name, "weights_sha256": weights.sha256, "image_sha256": image_ref.sha256,
             "crop": crop_list, "x0_sha256": hashlib.sha256(x0.tobytes()).hexdigest(), **(identity or {})}
    meta = {"model": model_spec.name, "task": model_spec.task, "scale": model_spec.scale,
            "colour": model_spec.colour, "value_range": list(model_spec.value_range), "weights": weights,
            "image": image_ref, "crop": crop_list, **(attrs or {})}
    return Source(builder, x0, source_key(ident)), ident, meta


def model_source(name: str, weights=None, trust_pickle: bool = False, image_path=None,
                 crop: str | None = None, model_args: dict | None = None,
                 input_range=None) -> tuple[Source, dict, dict]:
    """(Source, identity, attrs) for model ``name`` with ``weights`` (see ``weights_ref``) at an image
    (``read_image``: a file, an array or None for the default image) cropped to ``crop`` ("X,Y,W,H" or None).

    ``name``: a registry name, or the user's own ``FILE.py:FACTORY`` / ``package.module:FACTORY`` (see
    ``user_source``; ``model_args`` and ``input_range`` apply to those only). ``identity``: model, weights /
    image / x0 sha256 and crop (``pipeline.compute`` adds mode, tile and shapes). ``attrs``: ``StoreAttrs``
    fields (model, task, scale, colour, value_range, weights, image, crop; ``model_spec`` for user models).
    """
    from pipeline.models import build, spec
    from pipeline.models.user import UserModelError, is_user_spec

    if is_user_spec(name):
        return user_source(name, weights, trust_pickle, image_path, crop, model_args, input_range)
    if model_args:
        raise UserModelError(f"--model-arg is for your own models (FILE.py:FACTORY); {name} is a registry model")
    model_spec = spec(name)
    if input_range is not None:
        from pipeline.models.user import input_range as parse_range

        if parse_range(input_range) != tuple(model_spec.value_range):
            lo, hi = model_spec.value_range
            raise UserModelError(f"{name} takes inputs in [{lo:g}, {hi:g}]; --input-range is for your own models")
    ref, loadable = weights_ref(name, weights)
    builder = functools.partial(build, name, loadable, trust_pickle=trust_pickle)
    return _assemble(model_spec, builder, read_image(image_path, crop), ref)


def user_source(text: str, weights=None, trust_pickle: bool = False, image=None, crop: str | None = None,
                model_args: dict | None = None, input_range=None) -> tuple[Source, dict, dict]:
    """``model_source`` of a user model ``FILE.py:FACTORY`` / ``package.module:FACTORY`` called with
    ``model_args``, whose inputs map pixel values 0..255 to ``input_range`` ("0,1" by default, "0,255", "-1,1").

    The model is built here once and probed on the image (task, scale, colour: ``user.infer``); workers rebuild it
    from the picklable spec, reading the file by path and checking its sha256 and the digest of the built state.
    The store records the spec by file name, factory and arguments with the file's and the state's sha256
    (``model_spec``), and they join the identity, so a changed file is never resumed into an older store.
    """
    image_triple = read_image(image, crop)
    um = user_model(text, weights, trust_pickle, image_triple[0], model_args, input_range)
    identity = {"model_sha256": um.user.sha256, "model_args": dict(um.user.args), "state_sha256": um.state_sha256}
    return _assemble(um.spec, um.build, image_triple, um.weights, identity, {"model_spec": um.record})


class UserModel(NamedTuple):
    """A user model ready to run: ``model`` (eval mode), its inferred ``spec`` (``ModelSpec``), ``weights``
    (FileRef), ``build`` (picklable zero-argument builder, checked against ``state_sha256``), ``user``
    (``UserSpec``) and ``state_sha256``."""

    model: object
    spec: object
    weights: FileRef
    build: object
    user: object
    state_sha256: str

    @property
    def record(self) -> dict:
        """The store's ``model_spec`` attribute."""
        return self.user.record(self.state_sha256)


def user_model(text: str, weights=None, trust_pickle: bool = False, img=None, model_args: dict | None = None,
               input_range=None) -> UserModel:
    """Build ``FILE.py:FACTORY`` / ``package.module:FACTORY`` with ``model_args`` and ``weights`` (a state dict
    file, "random" or None: the factory's own parameters) and probe it on ``img`` (uint8 (H, W, C)) for what
    linterp needs (``pipeline.models.user.infer``). A factory's float64 (float16, bfloat16) model is used in float32
    (``user.float32``, as module objects are); ``state_sha256`` is the digest of the model the factory made."""
    from pipeline.models import user
    from pipeline.models.weights import WeightsError

    spec = user.parse_spec(text, model_args)
    if weights is not None and str(weights) != RANDOM and not Path(weights).is_file():
        raise WeightsError(f"weights file {weights} does not exist")
    if weights is None or str(weights) == RANDOM:
        ref, loadable = (FileRef(RANDOM, RANDOM), RANDOM) if weights else (FileRef(), None)
    else:
        ref, loadable = file_ref(weights), str(Path(weights).resolve())
    made = user.instantiate(spec, loadable, trust_pickle)
    digest = user.state_digest(made)  # of the model as made: a float64 one is recorded as a module object is
    model = user.float32(made)
    builder = functools.partial(user.build, spec, loadable, trust_pickle, digest)
    model_spec = user.infer(model, img, user.input_range(input_range), spec.label, builder)
    return UserModel(model, model_spec, ref, builder, spec, digest)


def module_source(module, image=None, crop: str | None = None, name: str | None = None, input_range=None,
                  scheduler="threads") -> tuple[Source, dict, dict]:
    """``model_source`` of a module object (the Python API), named ``name`` (default: its class name).

    Workers get deep copies: in this process with the threads scheduler; pickled by value (cloudpickle, with the
    code of the user's own classes: ``user.pickle_by_value``) for processes and clusters. A module that cannot be
    pickled raises a one-line ``UserModelError`` saying to use threads or a ``FILE.py:FACTORY`` spec.
    """
    from torch import nn

    from pipeline.models import user

    if not isinstance(module, nn.Module):
        raise user.UserModelError(f"expected a torch.nn.Module, a registry name or FILE.py:FACTORY, "
                                  f"got {type(module).__name__}")
    digest = user.state_digest(module)
    builder = user.ModuleCopy(module, digest)
    if not (isinstance(scheduler, str) and scheduler in ("threads", "sync")):
        import cloudpickle

        try:
            user.pickle_by_value(module)
            cloudpickle.dumps(builder)
        except Exception as err:  # noqa: BLE001 - pickling raises many kinds
            raise user.UserModelError(
                f"{type(module).__name__} cannot be sent to other processes ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); use scheduler='threads', or name the model "
                f"by a spec 'file.py:factory'") from None
    label = name or type(module).__name__
    image_triple = read_image(image, crop)
    model_spec = user.infer(builder(), image_triple[0], user.input_range(input_range), label, builder)
    cls = type(module)
    record = {"kind": "object", "class": f"{cls.__module__}.{cls.__qualname__}", "factory": None, "args": {},
              "file": {"name": None, "sha256": None}, "state_sha256": digest}
    identity = {"model_class": record["class"], "state_sha256": digest}
    return _assemble(model_spec, builder, image_triple, FileRef(), identity, {"model_spec": record})


def refuse_changed_model(out, identity: dict) -> None:
    """Raise ``StoreError`` (one line) when ``out`` is a store of the same user model whose file has changed
    since: a resumed run must not mix two versions of the code (``create_store`` refuses any other mismatch)."""
    from pipeline.store import StoreError, open_store

    if not (Path(out) / "zarr.json").is_file():
        return
    try:
        found = open_store(out).attrs
    except StoreError:
        return  # create_store says what is wrong with it
    then, now = found.identity.get("model_sha256"), identity.get("model_sha256")
    if then and now and then != now and found.identity.get("model") == identity.get("model"):
        file = (found.model_spec or {}).get("file", {}).get("name") or found.model
        raise StoreError(f"{out}: {file} has changed since the store was computed (sha256 {then[:12]}… then, "
                         f"{now[:12]}… now); restore the file, or use another --out")


def find_weights(name: str, ref: FileRef, given=None) -> str | None:
    """What ``models.build`` takes to rebuild registry model ``name`` with the weights a store records.

    ``given``: a file the user names (checked against the recorded sha256). Otherwise the project's default file
    of ``name``, ``cache_dir() / ref.name`` and the official default file (downloaded into the cache when
    missing, only if the store names that file) are tried in this order, each only when
    its sha256 matches. Raises ``WeightsError`` (one line, saying how to pass the file) when none does.
    """
    from pipeline.models import spec
    from pipeline.models.registry import NO_PARAMETERS, PROJECT, default_weights_path
    from pipeline.models.weights import WeightsError, cache_dir, file_sha256

    if ref.name is None:
        return None
    if ref.name == RANDOM:
        return RANDOM
    short = (ref.sha256 or "?")[:12]
    if given is not None:
        return given_weights(ref, given)
    model_spec = spec(name)

    def default_file():
        try:
            return default_weights_path(model_spec)
        except WeightsError:  # not installed, or offline
            return None

    project = model_spec.weights == PROJECT
    official = (model_spec.weights not in (None, NO_PARAMETERS, PROJECT)
                and model_spec.weights.rsplit("/", 1)[-1] == ref.name)
    # the project's file, a copy in the cache, and last the official download (the only step that may go online)
    attempts = [default_file] if project else []
    attempts += [lambda: cache_dir() / ref.name] + ([default_file] if official else [])
    for attempt in attempts:
        path = attempt()
        if path is not None and path.is_file() and (ref.sha256 is None or file_sha256(path) == ref.sha256):
            return str(path)
    raise WeightsError(f"the weights the store was computed with ({ref.name}, sha256 {short}…) are neither "
                       f"{name}'s default file nor in the weight cache {cache_dir()}; pass --weights PATH")


def given_weights(ref: FileRef, given) -> str:
    """The absolute path of a weight file the user names, refused unless its sha256 is the recorded one."""
    from pipeline.models.weights import WeightsError, file_sha256

    path = Path(given)
    if not path.is_file():
        raise WeightsError(f"weights file {given} does not exist")
    if ref.sha256 and file_sha256(path) != ref.sha256:
        raise WeightsError(f"{given} is not the weights file the store was computed with "
                           f"({ref.name}, sha256 {(ref.sha256 or '?')[:12]}…)")
    return str(path.resolve())


def find_user_weights(ref: FileRef, given=None, near=None) -> str | None:
    """``find_weights`` for user models: the file given, else one of the recorded name and sha256 in the folder
    ``near`` (the model file's), the current folder or the weight cache."""
    from pipeline.models.weights import WeightsError, cache_dir, file_sha256

    if ref.name is None or ref.name == RANDOM:
        return ref.name
    if given is not None:
        return given_weights(ref, given)
    for folder in [Path(near)] * (near is not None) + [Path.cwd(), cache_dir()]:
        path = folder / ref.name
        if path.is_file() and (ref.sha256 is None or file_sha256(path) == ref.sha256):
            return str(path)
    raise WeightsError(f"the weights the store was computed with ({ref.name}, sha256 {(ref.sha256 or '?')[:12]}…) "
                       f"are neither next to the model file, in the current folder nor in the weight cache "
                       f"{cache_dir()}; pass --weights PATH")


def model_from_store(store, trust_pickle: bool = False, weights=None, model=None):
    """The model ``store`` was computed from, in eval mode: its registry name and recorded weights (found by
    ``find_weights``; ``weights`` names the file explicitly), or the user model it records (``model``: where its
    code is now, ``FILE.py[:FACTORY]`` / ``package.module``, default a file of the recorded name in the current
    folder; or the module object itself). Raises ``ValueError`` subclasses (one line)."""
    from torch import nn

    from pipeline.models import build, user

    attrs = store.attrs
    record = attrs.model_spec
    if isinstance(model, nn.Module):
        digest = user.state_digest(model)
        wanted = (record or {}).get("state_sha256")
        if wanted and digest != wanted:
            raise user.UserModelError(f"{store.path}: this {type(model).__name__} is not the module the store was "
                                      f"computed from (state sha256 {digest[:12]}…, recorded {wanted[:12]}…)")
        return user.ModuleCopy(model, digest)()
    if record:
        spec = user.locate(record, attrs.model, model)
        near = Path(spec.path).parent
        return user.build(spec, find_user_weights(attrs.weights, weights, near), trust_pickle,
                          record.get("state_sha256"))
    if not attrs.model:
        raise ValueError(f"{store.path}: the store does not name its model (no 'model' attribute)")
    if model is not None and str(model) != attrs.model:
        raise ValueError(f"{store.path}: the store was computed with {attrs.model}, not {model}")
    return build(attrs.model, find_weights(attrs.model, attrs.weights, weights), trust_pickle=trust_pickle)
