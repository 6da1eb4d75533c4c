"""The paper's two videos (appendix, section D): ``FilterMatrix_SR`` and ``FilterMatrix_I2I``.

A film shows the models of several bundles (``pipeline.bundle``) side by side: one panel per model, named as in
the paper. Its stores are the bundles' own: each bundle's parts are resolved through the bundle module (official
weights, or the project's stand-ins with ``defaults``, so new stand-ins are picked up as the bundles change), and
each store is reused when a complete store of the same inputs exists (the bundle's work folder, the demo's
``out/demo/stores``, or any ``out/*/stores`` / ``out/bundles/*/stores``), else computed there with its SVD.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline import bundle as bundles


@dataclass(frozen=True)
class Film:
    """``bundles``: the bundles whose models it shows, in panel order; ``names``: the paper's name of each."""

    name: str
    bundles: tuple[str, ...]
    names: tuple[str, ...]


FILMS: dict[str, Film] = {f.name: f for f in (
    Film("FilterMatrix_SR", ("Bicubic4x", "4L-PixelShuffle", "EDSR4x"), ("Bicubic", "PixelShuffle", "EDSR")),
    Film("FilterMatrix_I2I", ("CycleGAN-VanGogh", "CycleGAN-Ukiyoe", "CycleGAN-Photo2Label"),
         ("VanGogh", "Ukiyoe", "Photo2Label")),
)}


def get_film(name: str) -> Film:
    if name not in FILMS:
        raise bundles.BundleError(f"unknown film '{name}'; known: {', '.join(FILMS)}")
    return FILMS[name]


def reusable_stores(root: Path = Path("out")) -> tuple[Path, ...]:
    """Stores that earlier builds left under ``root`` (a folder output's ``stores``, an archive's work folder)."""
    return tuple(sorted(root.glob("*/stores/*.zarr")) + sorted(root.glob("bundles/*/stores/*.zarr")))


def _parts(film: Film, bundle: bundles.Bundle, defaults: bool) -> list[bundles.Part]:
    """The bundle's parts; an official file that cannot be fetched gives one line that fits a film (a film takes
    no WEIGHTS=PATH: the file goes into the weights cache, where the bundle finds it too)."""
    from pipeline.models.weights import cache_dir

    try:
        return bundles.resolve_parts(bundle, defaults=defaults)
    except bundles.BundleError as err:
        head, found, _ = str(err).partition("; download that file")
        if not found:
            raise
        raise bundles.BundleError(f"{film.name}: {head}; download that file into {cache_dir()} (the weights cache), "
                                  f"or use DEFAULTS=1 (--defaults) for the project's stand-ins") from err


def film_stores(name: str, *, defaults: bool = False, image: str | None = None, crop: str | None = None,
                trust_pickle: bool = False, device: str = "auto", scheduler: str = "threads",
                workers: int | None = None, progress: bool = True, echo=print):
    """The stores of film ``name`` (found or built), with the panels' names and the notes for the subtitles.

    Returns (store paths, names, notes); a name carries the model when a stand-in replaces the paper's model.
    """
    from pipeline.models import build as build_model

    film = get_film(name)
    plans = []
    for bundle_name in film.bundles:  # resolve every model first: a missing file fails in one line before any work
        bundle = bundles.get_bundle(bundle_name)
        used_crop = bundles.resolve_crop(bundle, image, crop)
        parts = _parts(film, bundle, defaults)
        for part in parts:  # wrong keys, pickles, unreadable files
            build_model(part.model, part.weights, trust_pickle=trust_pickle)
        plans.append((bundle, used_crop, parts))
    reuse = reusable_stores()
    paths, names, notes = [], [], []
    for (bundle, used_crop, parts), paper_name in zip(plans, film.names):
        folder = bundles.work_folder(bundle, parts, image, used_crop) / "stores"
        for part in parts:
            paths.append(bundles.build_store(part, folder, image=image, crop=used_crop, k=bundle.k,
                                             trust_pickle=trust_pickle, device=device, scheduler=scheduler,
                                             workers=workers, progress=progress,
                                             note=bundles.stand_in_note(bundle, part), reuse=reuse, echo=echo))
            names.append(paper_name if len(parts) == 1 else f"{paper_name} {part.model}")
            if part.stand_in_for:
                notes.append(f"{paper_name} is linterp's stand-in {part.model}, not the official "
                             f"{part.stand_in_for}.")
    return paths, names, notes
