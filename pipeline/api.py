"""The Python API (docs/api.md): what the command line does, from a notebook, with the same progress bars,
resume and verification. Importable from the package itself (``pipeline.compute_store`` …).

A model is a registry name, a spec ``"file.py:factory"`` / ``"package.module:factory"`` (exactly as
``linterp compute --model``: every scheduler, the same store), or a ``torch.nn.Module`` object. A module object
has no file to rebuild it from: workers get deep copies of it, in this process with ``scheduler="threads"``
(the default), pickled by value (cloudpickle) for ``"processes"`` and ``tcp://`` clusters, which must be able to
unpickle its class (defined in the notebook, or importable there); one that cannot be pickled is refused in one
line. Its store records the class and the digest of its parameters, and ``verify_store`` / ``svd_store`` need
the module again (``model=``).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.store import Store, open_store

__all__ = ["compute_store", "svd_store", "verify_store", "export_site", "open_store"]


def _path(store) -> Path:
    return store.path if isinstance(store, Store) else Path(store)


def compute_store(model, image=None, out=None, *, weights=None, crop: str | None = None,
                  model_args: dict | None = None, input_range=None, name: str | None = None,
                  trust_pickle: bool = False, scheduler="threads", workers: int | None = None, device="auto",
                  tile: int | None = None, mode: str = "auto", batch: int | None = None,
                  dtype: str = "float32", support_tol: float | None = None, progress: bool = True) -> Store:
    """Compute F(x0) of ``model`` at ``image`` into the store ``out``, verified; returns the complete ``Store``.

    ``image``: a file, a uint8 array (H, W[, C]), or None (the built-in astronaut face); ``crop``: "X,Y,W,H".
    ``weights`` / ``model_args`` (a dict of keyword options of the factory): for names and specs; ``input_range``:
    "0,1" (default), "0,255" or "-1,1" for specs and module objects; ``name``: a module object's name in the
    store and the site (default: its class name); ``device``: "auto", "cpu", "cuda" (every GPU), "cuda:N" or a
    ``torch.device``. The other options are ``linterp compute``'s. Rerunning the same call resumes an unfinished
    store; a store of other inputs, or of a model file changed since, is refused.
    """
    from torch import nn

    from pipeline import compute as comp
    from pipeline.sources import model_source, module_source, refuse_changed_model

    if out is None:
        raise TypeError("compute_store needs out, the folder of the store (e.g. 'photo.zarr')")
    device = comp.resolve_device(device)  # before the model is built: a GPU that is not there costs nothing
    if not isinstance(model, (str, Path, nn.Module)):
        raise TypeError(f"model must be a registry name ('edsr-small-x4'), a spec ('net.py:make') or a "
                        f"torch.nn.Module, not {type(model).__name__}")
    if isinstance(model, nn.Module):
        if weights is not None or model_args:
            raise ValueError("weights and model_args are for model names and specs: give the module its "
                             "weights and options yourself")
        source, identity, attrs = module_source(model, image, crop, name, input_range, scheduler)
    else:
        if name is not None:
            raise ValueError("name is for module objects: names and specs name themselves")
        source, identity, attrs = model_source(str(model), weights, trust_pickle, image, crop, model_args,
                                               input_range)
    refuse_changed_model(out, identity)
    return comp.compute(out, source, identity=identity, attrs=attrs, tile=tile, mode=mode,
                        batch=batch or comp.DEFAULT_BATCH, scheduler=scheduler, workers=workers, device=device,
                        dtype=dtype, support_tol=support_tol, progress=progress)


def svd_store(store, k: int, *, model=None, weights=None, source: str = "auto", trust_pickle: bool = False,
              progress: bool = True, **options) -> Store:
    """The top-``k`` SVD of a store's F into the store (``svd/S``, ``svd/U``, ``svd/V``); returns the store.

    ``source``: "store" (the stored F), "model" (the interpreter, rebuilt: ``model`` is where a user model's file
    is now, or the module object; ``weights`` its weight file) or "auto". ``options``: ``pipeline.svd.svd_store``'s
    (method, tol, batch, max_iter, seed). A killed run resumes from its checkpoint.
    """
    from pipeline.svd import svd_store as run

    path = _path(store)
    run(path, k, source=source, trust_pickle=trust_pickle, weights=weights, model=model, progress=progress,
        **options)
    return open_store(path)


def verify_store(store, model=None, *, weights=None, write: bool = False, trust_pickle: bool = False,
                 device="cpu", progress: bool = True, **options):
    """Re-check a store against a freshly built interpreter (``linterp verify``); returns the ``Report``
    (``.status``, ``.checks``, ``.summary()``).

    ``model``: where a user model's file is now, or the module object (None: the store's own record, a registry
    name or a file of the recorded name in the current folder); ``weights``: its weight file when it cannot be
    found by name; ``device``: "cpu", "cuda", "cuda:N", "auto" or a ``torch.device``. ``write``: record the
    result in the store. ``options``: samples, seed, tolerances.
    """
    from pipeline import verify as checks

    opened = open_store(_path(store), mode="r+" if write else "r")
    report = checks.verify_store(opened, device=device, weights=weights, model=model, trust_pickle=trust_pickle,
                                 progress=progress, **options)
    if write:
        checks.record(opened, report)
    return report


def export_site(stores, out, **options) -> Path:
    """Export stores of one image (one panel each, shared cursor) as an offline site; returns its index.html.

    ``stores``: paths or ``Store`` objects; ``options``: ``pipeline.export.site.export_site``'s (normalise,
    scheduler, workers, progress). A rerun redoes only what is missing.
    """
    from pipeline.export.site import export_site as run

    if isinstance(stores, (str, Path, Store)):
        stores = [stores]
    run([_path(s) for s in stores], out, **options)
    return Path(out) / "index.html"

