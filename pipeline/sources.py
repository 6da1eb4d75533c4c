"""The inputs of a store: a model with its weights and an image with its crop, in both directions.

- ``model_source(name, weights, trust_pickle, image_path, crop)`` turns what a user names into what
  ``pipeline.compute`` needs: a picklable ``Source`` (model builder + x0), the ``identity`` a resumed store must
  match, and the store attributes that name the inputs portably (``FileRef``: file name + sha256, never a path).
- ``model_from_store(store, weights)`` goes back: the model a store was computed from, its weight file found
  again by name and sha256 (the file given, the registry's default file, or the weight cache), never through a
  path that only the machine that computed the store had.
"""
from __future__ import annotations

import functools
import hashlib
from pathlib import Path

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


def image_input(image_path, crop, model_spec) -> tuple[np.ndarray, FileRef, tuple[int, int, int, int] | None]:
    """(x0 float32 (1, C, H, W) in the model's units, the image's record, the crop box or None).

    ``image_path``: an image file, or None for the built-in default image (recorded by its label and the sha256
    of its uint8 pixels); ``crop``: "X,Y,W,H" (pixels) or None.
    """
    from pipeline import images

    if image_path is None:
        label, img = images.default_image()
        ref = FileRef(label, hashlib.sha256(img.tobytes()).hexdigest())
    else:
        img, ref = images.load_image(image_path), file_ref(image_path)
    box = images.parse_crop(crop) if crop else None
    if box:
        img = images.crop(img, box)
    return images.to_input(img, model_spec).numpy(), ref, box


def model_source(name: str, weights=None, trust_pickle: bool = False, image_path=None,
                 crop: str | None = None) -> tuple[Source, dict, dict]:
    """(Source, identity, attrs) for registry model ``name`` with ``weights`` (see ``weights_ref``) at an image
    file (None: the default image) cropped to ``crop`` ("X,Y,W,H" or None).

    ``identity``: model, weights / image / x0 sha256 and crop (``pipeline.compute`` adds mode, tile and
    shapes). ``attrs``: ``StoreAttrs`` fields (model, task, scale, colour, value_range, weights, image, crop).
    """
    from pipeline.models import build, spec

    model_spec = spec(name)
    x0, image, box = image_input(image_path, crop, model_spec)
    ref, loadable = weights_ref(name, weights)
    crop_list = list(box) if box else None
    identity = {"model": name, "weights_sha256": ref.sha256, "image_sha256": image.sha256, "crop": crop_list,
                "x0_sha256": hashlib.sha256(x0.tobytes()).hexdigest()}
    attrs = {"model": name, "task": model_spec.task, "scale": model_spec.scale, "colour": model_spec.colour,
             "value_range": list(model_spec.value_range), "weights": ref, "image": image, "crop": crop_list}
    builder = functools.partial(build, name, loadable, trust_pickle=trust_pickle)
    return Source(builder, x0, source_key(identity)), identity, attrs


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
        path = Path(given)
        if not path.is_file():
            raise WeightsError(f"weights file {given} does not exist")
        if ref.sha256 and file_sha256(path) != ref.sha256:
            raise WeightsError(f"{given} is not the weights file the store was computed with "
                               f"({ref.name}, sha256 {short}…)")
        return str(path.resolve())
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


def model_from_store(store, trust_pickle: bool = False, weights=None):
    """The model ``store`` was computed from, in eval mode: its registry name and recorded weights (found by
    ``find_weights``; ``weights`` names the file explicitly). Raises ``ValueError`` subclasses (one line)."""
    from pipeline.models import build

    attrs = store.attrs
    if not attrs.model:
        raise ValueError(f"{store.path}: the store does not name its model (no 'model' attribute)")
    return build(attrs.model, find_weights(attrs.model, attrs.weights, weights), trust_pickle=trust_pickle)
