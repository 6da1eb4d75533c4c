"""`linterp classify`: residual shares, layer-wise contributions, pixel discussions / votes and FGSM for classifiers.

The numbers are computed in `pipeline.classify`, the files written by `pipeline.classify_report`.
"""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands.options import THREADS, FiniteRange

from pipeline.commands.models import user_model_options
from pipeline.progress import counted

#: bundled data sets that need no image files (`--dataset`).
DATASETS = ("digits",)


def _digits_test(limit: int | None):
    from pipeline.training.data import digits_split

    _, (x, y) = digits_split()
    n = len(y) if limit is None else min(limit, len(y))
    return [(f"digits-test-{i:03d}", x[i:i + 1], int(y[i]), f"digits_split test {i}") for i in range(n)]


def _class_names(name: str, n_classes: int) -> list[str] | None:
    """The registry's class names; None (class indices) for your own model, whatever its number of classes: 1000
    scores need not be ImageNet's classes."""
    from pipeline.models.user import is_user_spec

    if is_user_spec(name):
        return None
    if name.startswith("digits"):
        return [str(k) for k in range(10)]
    if n_classes == 1000:
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    return None


def _earlier_output(out: Path) -> bool:
    """True when the folder ``out`` holds what an earlier classify run wrote there (results, a table, or the
    per-image cache a killed run resumes from), at its top or in one folder per model."""
    return any((d / name).exists() for d in (out, *(p for p in out.iterdir() if p.is_dir()))
               for name in ("results.json", "images", "table.csv"))


def _weights(model_spec, weights):
    """--weights, else an official file already in the torch hub cache (``torch.hub.get_dir()/checkpoints``), else
    None (the registry's default: its own cache or a download)."""
    if weights is not None or not (model_spec.weights or "").startswith("http"):
        return weights
    import torch

    from pipeline.models.weights import cache_dir

    file = model_spec.weights.rsplit("/", 1)[-1]
    hub = Path(torch.hub.get_dir()) / "checkpoints" / file
    return str(hub) if hub.is_file() and not (cache_dir() / file).exists() else None


def _inputs(images, dataset, limit, model_spec, size, crop, polarity):
    from pipeline.classify_report import image_files, load_input

    if dataset == "digits":
        if model_spec.in_channels != 1 or size != (32, 32):
            raise click.ClickException(f"--dataset digits needs a 1-channel 32×32 model (digits-vgg, digits-vgg-bn, "
                                       f"or your own with --size 32); this one takes {model_spec.in_channels}-channel "
                                       f"{size[0]}×{size[1]} inputs")
        return _digits_test(limit)
    files = image_files(images)
    if not files:
        raise click.ClickException("no image files found in --images")
    files = files[:limit] if limit is not None else files

    def loader(f):
        return lambda: load_input(f, model_spec, size, crop, polarity)

    return [(f.name, *_identified(f, loader(f))) for f in files]


def _identified(file: Path, loader) -> tuple:
    """(loader, label None, source) of an image file: its source is its content's sha256 (never where it lies:
    caches and reports hold no paths). A file that cannot be opened (no permission, a link that leads nowhere, an
    I/O error) gets a loader that raises the ``ImageError`` naming it and no source, so the run skips and names it;
    no cache is ever written for it (only a loaded input's analysis is)."""
    from pipeline.images import ImageError
    from pipeline.models.weights import file_sha256

    try:
        return loader, None, f"sha256 {file_sha256(file)}"
    except OSError as err:
        error = ImageError(f"cannot read image {file}: {err.strerror or err}")

    def refuse():
        raise error

    return refuse, None, None


@click.command()
@click.option("--model", "models", multiple=True, required=True,
              help="Registry name of a classifier, or your own: FILE.py:FACTORY or package.module:FACTORY; repeat "
                   "for several models (results go to OUT/<model>/).")
@user_model_options
@click.option("--weights", default=None,
              help="Weight file, only with a single --model; or 'random' (the seeded random initialisation), for all.")
@click.option("--trust-pickle", is_flag=True, help="Allow weight files that need unpickling (only trusted files).")
@click.option("--images", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Image file or folder of images, any size and colour; repeatable. Prepared for the model as "
                   "docs/classify.md says (photos: resize + centre crop; digits: grey, polarity, fit, levels).")
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="A bundled data set instead of --images: 'digits' = scikit-learn digits, test split.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@click.option("--attack", type=click.Choice(["fgsm"]), default=None, help="Also analyse attacked images.")
@click.option("--eps", multiple=True, type=FiniteRange(min=0), help="FGSM ε in input units; repeatable.")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Input side in pixels (default: the model's fixed or recommended size; your own model: 224).")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="Pixel discussions drawn for the top N classes.")
@click.option("--vote-classes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Pixels vote among the N best-scoring classes (0 = all classes).")
@click.option("--figures", type=click.IntRange(min=0), default=4, show_default=True,
              help="Images with discussion / attack figures.")
@click.option("--group", type=click.Choice(["layer", "source"]), default="layer", show_default=True,
              help="Contributions per layer (a conv with its batch norm and activation) or per raw bias source.")
@click.option("--polarity", type=click.Choice(["auto", "keep", "invert"]), default="auto", show_default=True,
              help="Digits models: invert images whose border is light (auto), never, or always.")
@click.option("--table", is_flag=True, help="Write Table 1 over all --model runs as OUT/table.{csv,md,html}.")
@click.option("--threads", type=THREADS, default=None, help="torch CPU threads (default: torch's).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def classify(models, model_args, input_range, weights, trust_pickle, images, dataset, limit, attack, eps, size, top,
             vote_classes, figures, group, polarity, table, threads, out, quiet):
    """Split each top-1 score into input term and per-layer bias contributions, and bring scores back to pixels.

    Writes OUT/results.json (one object per image: image, top1, score, input_term, residual, contributions,
    preprocessing for image files, and attacks when --attack), CSV files, PNG figures and index.html.
    Re-running resumes: images already analysed with the same settings are read from OUT/images/.
    """
    import re

    import numpy as np
    import torch

    from pipeline.classify import residual_table, summary
    from pipeline.commands.errors import one_line
    from pipeline.classify_report import generate, write_table
    from pipeline.images import ImageError
    from pipeline.interpreter import UnsupportedOperation
    from pipeline.models.registry import build, spec
    from pipeline.models.user import ProbeError, UserModelError, is_user_spec, parse_args
    from pipeline.preprocess import input_size
    from pipeline.sources import user_model, weights_ref

    if threads:
        torch.set_num_threads(threads)
    if bool(images) == bool(dataset):
        raise click.ClickException("give either --images or --dataset")
    if weights is not None and weights != "random" and len(models) > 1:
        raise click.ClickException("--weights FILE goes with a single --model ('random' goes with several)")
    if attack and not eps:
        raise click.ClickException("--attack fgsm needs at least one --eps")
    if eps and not attack:
        raise click.ClickException("--eps needs --attack fgsm")
    if out.is_dir() and any(out.iterdir()) and not _earlier_output(out):
        raise click.ClickException(f"{out} is not empty and is not an output of linterp classify; choose another "
                                   f"--out")
    results = {}
    for name in models:
        try:
            settings = {}
            if is_user_spec(name):  # probed on a blank image of the input size
                side = size or 224
                try:
                    user = user_model(name, weights, trust_pickle, np.zeros((side, side, 3), np.uint8),
                                      parse_args(model_args), input_range)
                except ProbeError as err:
                    given = "" if size else " (the default for your own model)"
                    raise UserModelError(f"{one_line(err)}; it was probed at {side}×{side}{given}: --size sets the "
                                         f"input side") from err
                model, model_spec, ref = user.model, user.spec, user.weights
                settings["model_spec"] = user.record
            else:
                model_spec = spec(name)
            if model_spec.task != "classify":
                raise click.ClickException(f"{name} is not a classifier (task '{model_spec.task}')")
            in_size, crop = input_size(name, model_spec, size)
            if not is_user_spec(name):
                ref, loadable = weights_ref(name, _weights(model_spec, weights))
                model = build(name, loadable, trust_pickle=trust_pickle)
            inputs = _inputs(images, dataset, limit, model_spec, in_size, crop, polarity)
            with torch.no_grad():
                n_classes = model(torch.zeros(1, model_spec.in_channels, *in_size))[0].numel()
            if attack and n_classes < 2:
                raise click.ClickException(f"{name} has {n_classes} class score: --attack fgsm needs at least 2 (the "
                                           f"cross-entropy of a single score is constant)")
            if n_classes > 100 and not vote_classes:
                click.echo(f"{name}: pixels vote among all {n_classes} classes ({n_classes} transposes per image); "
                           f"--vote-classes N limits the vote to the N best-scoring classes", err=True)
            target = out / re.sub(r"[^A-Za-z0-9_.-]+", "-", name) if len(models) > 1 else out
            results[name] = generate(
                model, name, inputs, target, eps=list(eps), top=top, vote_classes=vote_classes, figures=figures,
                group=group, class_names=_class_names(name, n_classes), value_range=model_spec.value_range,
                settings={"weights": ref.to_json(), "size": list(in_size), "crop": crop, **settings,
                          "preprocess": None if dataset else {"method": model_spec.preprocess, "polarity": polarity}},
                progress=not quiet)
        except (ImageError, UnsupportedOperation, ValueError, OSError) as err:
            message = one_line(err)  # named once: a message may start with the name (without folders) itself
            named = message.startswith((f"{name} ", f"{Path(name).name} "))
            raise click.ClickException(message if named else f"{name}: {message}")
        click.echo(f"{name}: {len(results[name])} {counted(len(results[name]), 'images')} -> {target / 'index.html'}")
        for row in summary(results[name]):
            acc = f", accuracy {row['accuracy']:.1%}" if "accuracy" in row else ""
            click.echo(f"  {row['condition']}: residual share {row['residual_share mean']:.1%} "
                       f"± {row['residual_share std']:.1%}, votes for top-1 {row['vote_agreement mean']:.1%}{acc}")
    if table:
        out.mkdir(parents=True, exist_ok=True)
        paths = write_table(residual_table(results), out / "table")
        click.echo("Table 1: " + ", ".join(str(p) for p in paths))
