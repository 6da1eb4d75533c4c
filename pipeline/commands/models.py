"""`linterp models` (the registry as a table) and `linterp run` (apply a model to an image, as a user would)."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--task", type=click.Choice(["sr", "i2i", "classify"]), help="Only models of this task.")
def models(task):
    """List the available models: task, scale, colour space, value range, input constraints and default weights."""
    from pipeline.models import available

    rows = [("name", "task", "scale", "colour", "range", "input", "default weights")]
    for s in available():
        if task and s.task != task:
            continue
        if s.fixed_size:
            size = f"= {s.fixed_size[1]}×{s.fixed_size[0]}"
        else:
            size = f"≥ {s.min_size}" + (f", ×{s.multiple}" if s.multiple > 1 else "")
        rows.append((s.name, s.task, f"×{s.scale}", s.colour, f"[{s.value_range[0]:g}, {s.value_range[1]:g}]", size,
                     s.weights_source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


#: ``--model`` of the commands that build a model.
MODEL_HELP = ("Registry name (see `linterp models`), or your own model: FILE.py:FACTORY or package.module:FACTORY, "
              "where FACTORY(**model args) returns a torch.nn.Module (docs/user-models.md).")


def user_model_options(command):
    """``--model-arg`` (``model_args``: a tuple of KEY=VALUE) and ``--input-range`` (``input_range``) for user
    models; ``pipeline.models.user.parse_args`` / ``input_range`` read them."""
    options = [
        click.option("--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
                     help="Keyword option of your model's FACTORY (repeatable); VALUE is a Python literal "
                          "(32, 0.5, True, 'text') or else a string."),
        click.option("--input-range", default=None, metavar="0,1|0,255|-1,1",
                     help="What pixel values 0..255 become at your model's input (default 0,1); registry "
                          "models know their own."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def model_and_image_options(command):
    """The options every command that applies a model to an image shares: ``name``, ``weights``,
    ``trust_pickle``, ``image_path``, ``crop_text``, ``model_args``, ``input_range``."""
    options = [
        click.option("--model", "name", required=True, help=MODEL_HELP),
        click.option("--weights", default=None,
                     help="Weight file (a state dict: .pt / .pth / .ckpt / .safetensors), or 'random'; default: the "
                          "model's default weights (your own model: the parameters its FACTORY gives it)."),
        click.option("--trust-pickle", is_flag=True, help="Allow weight files that hold pickled Python objects."),
        click.option("--image", "image_path", type=click.Path(dir_okay=False), default=None,
                     help="Input image (PNG, JPEG, …); default: the built-in astronaut face."),
        click.option("--crop", "crop_text", default=None, help="Crop the input first: X,Y,W,H in pixels."),
    ]
    command = user_model_options(command)
    for option in reversed(options):
        command = option(command)
    return command


@click.command()
@model_and_image_options
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Output image (PNG) for super-resolution and image-to-image models.")
@click.option("--top", type=click.IntRange(min=1), default=5, show_default=True, help="How many classes a classifier prints.")
@click.option("--polarity", type=click.Choice(["auto", "keep", "invert"]), default="auto", show_default=True,
              help="Digits models: invert images whose border is light (auto), never, or always.")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="Classifiers: the input side in pixels (default: the model's; your own classifier: 224), as "
                   "`linterp classify --size`.")
def run(name, weights, trust_pickle, image_path, crop_text, model_args, input_range, out_path, top, polarity, size):
    """Apply a model to an image: an image out for SR / image-to-image models, the top classes for classifiers.

    Classifiers take images of any size and colour, prepared as `linterp classify` prepares them (the line on
    stderr says how)."""
    import numpy as np
    import torch

    from pipeline import images, preprocess
    from pipeline.commands.errors import click_error, one_line, writable_file
    from pipeline.models import build, class_names, spec
    from pipeline.models.user import ProbeError, UserModelError, is_user_spec, parse_args
    from pipeline.sources import user_model

    user = is_user_spec(name)
    try:
        if user:  # your own model: probed on the image (at --size: a blank of its colours) for its task and colour
            img, channels, colour = _read_image(image_path, crop_text, composite_alpha=False)
            probe = img if size is None else np.zeros((size, size, img.shape[2]), np.uint8)
            try:
                built = user_model(name, weights, trust_pickle, probe, parse_args(model_args), input_range)
            except ProbeError as err:
                if size is not None:
                    raise
                raise UserModelError(f"{one_line(err)}; a classifier that takes one input size needs --size SIDE "
                                     f"(an image model: --crop X,Y,W,H)") from err
            model, model_spec = built.model, built.spec
        else:
            model_spec = spec(name)
        classifier = model_spec.task == "classify"
        if not classifier and not out_path:
            raise click.UsageError(f"{name} produces an image: pass --out OUT.png")
        if classifier and out_path:
            raise click.UsageError(f"{name} is a classifier: it prints its top classes and writes no image "
                                   f"(leave out --out)")
        if out_path:
            if image_path is not None and Path(out_path).resolve() == Path(image_path).resolve():
                raise click.UsageError(f"--out {out_path} is the input image: choose another name")
            _check_image_writer(out_path)
            writable_file(out_path)
        if not user or classifier:  # a classifier's alpha is composited, as `linterp classify` does it
            img, channels, colour = _read_image(image_path, crop_text, composite_alpha=classifier)
        if size is not None and not classifier:
            raise click.UsageError(f"--size is for classifiers; {name} takes the image at its own size (--crop)")
        if classifier:
            in_size, ratio = preprocess.input_size(model_spec.name, model_spec, size)
            x0, record = preprocess.classifier_input(img, model_spec, in_size, ratio, polarity=polarity,
                                                     source_channels=channels, source_colour=colour)
            click.echo(preprocess.describe(record), err=True)
        else:
            x0 = images.to_input(img, model_spec)
        if not user:
            model = build(name, weights, trust_pickle=trust_pickle)
    except (ValueError, OSError) as err:  # UnknownModelError, WeightsError, ImageError, UserModelError
        raise click_error(err) from err
    y = _apply(model, x0, name)
    if not torch.isfinite(y).all():
        raise click.ClickException(f"the model's output holds {int((~torch.isfinite(y)).sum())} NaN or infinite "
                                   f"values on this image (check the weights)")
    if model_spec.task == "classify":
        probabilities = torch.softmax(y[0].double().reshape(-1), 0)  # (1, K) or (1, K, 1, 1) scores
        labels = None if user else class_names(name)  # your own model's classes are their indices
        values, indices = probabilities.topk(min(top, probabilities.numel()))
        for p, i in zip(values.tolist(), indices.tolist()):
            click.echo(f"{p:8.4f}  {i:4d}" + (f"  {labels[i]}" if labels else ""))
        return
    out = images.to_image(y, model_spec)
    if model_spec.colour == "y" and img.shape[2] == 3:
        out = images.merge_luma(out, img)
    import imageio.v3 as iio

    try:
        iio.imwrite(out_path, out if out.shape[2] == 3 else out[:, :, 0])
    except (OSError, ValueError) as err:
        raise click.ClickException(f"--out {out_path}: cannot write the image ({one_line(err)})") from None
    click.echo(f"wrote {out_path} ({out.shape[1]}×{out.shape[0]})")


def _read_image(image_path, crop_text, composite_alpha: bool):
    """(uint8 (H, W, C) pixels, the file's samples per pixel, its colour) of ``--image`` (``images.load_image_file``;
    None, None for the built-in image), cropped by ``--crop``. The alpha of a file is dropped, or composited
    (``composite_alpha``) for classifiers, as ``linterp classify`` does it; your own model is probed on the pixels
    with it dropped, as ``sources.read_image`` gives them to every other command, before its task is known."""
    from pipeline import images

    img, channels, colour = ((images.default_image()[1], None, None) if image_path is None
                             else images.load_image_file(image_path, composite_alpha))
    return (img if crop_text is None else images.crop(img, images.parse_crop(crop_text))), channels, colour


def _apply(model, x0, name: str):
    """``model(x0)`` without gradients; a failure on this input (out of memory on a large image, an error in
    the model's code) is one line that names the input size (ClickException)."""
    import torch

    from pipeline.commands.errors import one_line, out_of_memory

    try:
        with torch.no_grad():
            return model(x0)
    except (RuntimeError, MemoryError, ValueError) as err:
        h, w = x0.shape[-2:]
        hint = "; use --crop X,Y,W,H for a smaller part" if out_of_memory(err) else ""
        raise click.ClickException(f"{name} failed on the {w}×{h} input: {one_line(err)}{hint}") from None


def _check_image_writer(path) -> None:
    """Fail before any work when no image writer knows the extension of ``path`` (one line)."""
    import warnings
    from pathlib import Path

    import imageio.v3 as iio
    import numpy as np

    suffix = Path(path).suffix.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            iio.imwrite("<bytes>", np.zeros((2, 2, 3), np.uint8), extension=suffix or ".none")
    except Exception:  # noqa: BLE001 - imageio raises several kinds for unknown or unwritable formats
        raise click.ClickException(f"--out {path}: no image writer knows the extension '{suffix or '(none)'}' "
                                   f"(use .png, .jpg, .bmp or .tif)") from None
