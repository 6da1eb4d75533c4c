"""Training and evaluation of the offline defaults: data, seeded/resumable loop, held-out metrics, CLI."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pipeline.cli import main
from pipeline.models.bicubic import Bicubic
from pipeline.models.registry import WEIGHTS_DIR, build
from pipeline.training import data, render, styles
from pipeline.training import evaluate as evaluate_module
from pipeline.training.evaluate import evaluate, evaluate_digits, psnr, task_for
from pipeline.training.loop import checkpoint_path, train
from pipeline.interpreter import interpret
from pipeline.training.recipes import RECIPES, Recipe, Stage
from pipeline.training.tasks import Digits, FlatColumns, SuperResolution, Translation, label_edges

TINY_SR = SuperResolution(scale=4, channels=1, patch=8, batch=4, photos=("coins",))


def tiny_recipe(name="pixelshuffle-x4", task=TINY_SR, steps=4, lr=1e-3, seed=0):
    return Recipe(name, task, steps=steps, lr=lr, seed=seed)


# --- data ------------------------------------------------------------------------------------------------------

def test_splits_are_disjoint_and_keep_the_demo_image_out():
    from pipeline.training.recipes import COLOUR_PHOTOS

    assert not set(data.TRAIN_PHOTOS) & set(data.HELD_OUT_PHOTOS)
    assert not set(COLOUR_PHOTOS) & set(data.HELD_OUT_PHOTOS) and set(data.TRAIN_PHOTOS) < set(COLOUR_PHOTOS)
    assert RECIPES["i2i-paint"].task.photos == RECIPES["i2i-label"].task.photos == COLOUR_PHOTOS
    assert RECIPES["i2i-label"].finetune.task.base is RECIPES["i2i-label"].task
    assert "astronaut" in data.HELD_OUT_PHOTOS
    assert "cat" not in data.TRAIN_PHOTOS  # skimage's cat is chelsea: the same photo once only


def test_debian_photos_load_by_prefix_reduced_and_a_missing_package_is_named(tmp_path, monkeypatch):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (600, 1500, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "wide.png", big)
    monkeypatch.setitem(data.DEBIAN_SOURCES, "test:", ("some-package", tmp_path))
    img = data.load_photo.__wrapped__("test:wide")
    assert img.shape == (410, data.DEBIAN_MAX_SIDE, 3) and img.dtype == np.float32
    assert np.array_equal(img * 255, np.round(img * 255))  # rounded to 8 bits
    with pytest.raises(ValueError, match=r"photo 'nonesuch' not found in .*apt-get install some-package"):
        data.load_photo.__wrapped__("test:nonesuch")
    for name in data.OPENCV_COLOUR_PHOTOS + data.DEBIAN_TRAIN_PHOTOS:
        assert any(name.startswith(prefix) for prefix in data.DEBIAN_SOURCES)


def test_sr_pair_is_bicubic_antialiased_downsampling_quantised_to_8_bits():
    lr, hr = data.sr_pair("coins", 4)
    assert hr.shape[-2] % 4 == 0 and hr.shape[-1] % 4 == 0
    assert lr.shape[-2:] == (hr.shape[-2] // 4, hr.shape[-1] // 4)
    assert torch.equal(lr, torch.round(lr * 255) / 255)
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(data.bicubic_down(flat, 4), torch.full((1, 3, 4, 4), round(0.4 * 255) / 255))
    # the antialiased kernel spans scale * 4 HR pixels: one bright HR pixel spreads over several LR pixels
    dot = torch.zeros(1, 1, 32, 32)
    dot[..., 13, 13] = 1.0
    small = torch.nn.functional.interpolate(dot, scale_factor=0.25, mode="bicubic", antialias=True)
    assert (small.abs() > 1e-4).sum() > 4
    assert torch.allclose(data.bicubic_down(dot, 4), torch.round(small.clamp(0, 1) * 255) / 255)


def test_luma_is_bt601_full_range():
    rgb = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert data.luma(rgb).item() == pytest.approx(0.299)
    assert data.luma(torch.ones(1, 3, 2, 2)).allclose(torch.ones(1, 1, 2, 2))


def test_styles_are_what_their_docstrings_say():
    img = data.load_photo("chelsea")[40:136, 120:216]
    paint, woodcut, label = (styles.STYLES[k](img) for k in ("paint", "woodcut", "label"))
    assert paint.shape == woodcut.shape == label.shape == img.shape and paint.dtype == np.float32
    # paint: squeezed into (0.03, 0.97), no hard clipping; smoother than the normalised photo (Kuwahara, strokes)
    assert 0.03 < paint.min() and paint.max() < 0.97
    z = data.normalise(img)
    assert np.abs(np.diff(paint, axis=1)).mean() < 0.8 * np.abs(np.diff(z, axis=1)).mean()
    # woodcut: posterised levels, paper-tinted lights, dark outlines
    outline = woodcut.max(axis=2) < 0.16
    assert 0.01 < outline.mean() < 0.5
    # label: palette colours only, inside (0.1, 0.9) where a tanh output reaches them, with untextured areas in
    # the background class
    colours = {tuple(c) for c in label.reshape(-1, 3).tolist()}
    palette = styles.label_colours().astype(np.float32)
    assert colours <= {tuple(c) for c in palette.tolist()} and len(colours) >= 2
    assert palette.min() == pytest.approx(0.1) and palette.max() == pytest.approx(0.9)
    assert np.array_equal(np.argmax(palette, 1), np.argmax(styles.LABEL_PALETTE, 1))  # the same hues
    flat = np.full((64, 64, 3), 0.4) + np.linspace(0, 0.1, 64)[None, :, None]  # a smooth gradient: no texture
    assert (styles.label_map(flat) == 0).all()


def test_kuwahara_keeps_a_step_edge_and_flattens_each_side():
    img = np.zeros((20, 20, 3))
    img[:, 10:] = 1.0
    img += np.random.default_rng(0).normal(0, 0.01, img.shape)
    out = styles.kuwahara(img, 3)
    assert np.abs(out[:, :9] - 0).max() < 0.02 and np.abs(out[:, 11:] - 1).max() < 0.02
    assert out[:, :9].std() < img[:, :9].std()


def test_normalise_removes_brightness_contrast_and_colour_cast():
    img = data.load_photo("chelsea")[100:164, 200:264]
    z = data.normalise(img)
    assert np.allclose(z.mean(axis=(0, 1)), 0.5, atol=0.02)  # clipping moves the mean a little
    shifted = 0.4 * img + np.array([0.3, -0.1, 0.05])
    assert np.allclose(data.normalise(shifted), z, atol=1e-9)
    for style in styles.STYLES.values():  # the targets are built from the normalised photo: invariant too
        assert np.allclose(style(shifted), style(img), atol=1e-5)
    # ... which is exactly what an instance-normalised generator cannot see
    net = build("i2i-paint", weights="random").double()
    for norm in (m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)):
        norm.eps = 0.0  # the norms' eps is the only thing that tells the two inputs apart
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double() * 2 - 1
    x_shifted = torch.from_numpy(shifted).permute(2, 0, 1)[None].double() * 2 - 1
    with torch.no_grad():
        assert torch.allclose(net(x), net(x_shifted), atol=1e-5)
        assert not torch.allclose(net(x), net(x.flip(-1)), atol=1e-2)  # and it does see the image


def test_random_crops_are_aligned_pairs():
    lr, hr = data.sr_pair("coins", 4)
    a, b = data.random_crops([(lr, hr)], batch=6, size=8, scale=4, rng=np.random.default_rng(1))
    assert a.shape == (6, 3, 8, 8) and b.shape == (6, 3, 32, 32)
    # each LR crop is the 8-bit bicubic downsampling of its HR crop (away from the crop border)
    down = data.bicubic_down(b, 4)
    assert (down - a)[..., 2:-2, 2:-2].abs().max() <= 1 / 255 + 1e-6


def test_digits_split_is_fixed_stratified_and_disjoint():
    (xtr, ytr), (xte, yte) = data.digits_split()
    assert xtr.shape == (1347, 1, 32, 32) and xte.shape == (450, 1, 32, 32)
    assert 0 <= xtr.min() and xtr.max() <= 1
    assert torch.bincount(yte).min() >= 43
    flat_tr = {tuple(v) for v in xtr.flatten(1).numpy().round(4)}
    assert not any(tuple(v) in flat_tr for v in xte.flatten(1).numpy().round(4)[:50])


def test_digits_8x8_is_the_split_before_upsampling_and_validation_stays_inside_training():
    (x8, y8), (t8, ty8) = data.digits_8x8()
    (x, y), (t, ty) = data.digits_split()
    assert x8.shape == (1347, 1, 8, 8) and t8.shape == (450, 1, 8, 8)
    assert torch.equal(render.upsample(x8, 32, "bilinear"), x) and torch.equal(render.upsample(t8, 32, "bilinear"), t)
    assert torch.equal(y8, y) and torch.equal(ty8, ty)
    (fit, yf), (val, yv) = data.digits_validation_split()
    assert len(yf) + len(yv) == 1347 and len(yv) == 270  # ceil(0.2 × 1347), as scikit-learn rounds
    train_rows = {tuple(v) for v in x8.flatten(1).tolist()}
    fit_rows = {tuple(v) for v in fit.flatten(1).tolist()}
    assert all(tuple(v) in train_rows for v in val.flatten(1).tolist())  # validation images are training images
    assert sum(tuple(v) in fit_rows for v in val.flatten(1).tolist()) <= 2  # and not fitted (up to duplicates)
    assert Digits(validation=True).images()[0] is fit


def test_render_operations():
    (x8, _), _ = data.digits_8x8()
    x8 = x8[:5]
    # area averaging upsamples by an integer factor exactly as nearest neighbour does; the others differ
    ups = {m: render.upsample(x8, 32, m) for m in render.MODES}
    assert torch.equal(ups["area"], ups["nearest"]) and not torch.equal(ups["bilinear"], ups["bicubic"])
    assert all(0 <= float(u.min()) and float(u.max()) <= 1 for u in ups.values())
    img = ups["bilinear"]
    moved = render.shift(img, 2, -3)
    assert torch.equal(moved[..., 2:, :-3], img[..., :-2, 3:]) and float(moved[..., :2, :].abs().max()) == 0
    assert torch.equal(render.shift(moved, -2, 3)[..., 2:-2, 3:-3], img[..., 2:-2, 3:-3])
    thick, thin = render.thickness(img, 1), render.thickness(img, -1)
    assert (thick >= img).all() and (thin <= img).all() and thick.sum() > img.sum() > thin.sum()
    assert torch.allclose(render.rotate(img, 0.0), img, atol=1e-6)
    turned = render.rotate(render.rotate(img, 90.0), -90.0)
    assert torch.allclose(turned[..., 4:-4, 4:-4], img[..., 4:-4, 4:-4], atol=1e-5)
    assert torch.equal(render.quantise(img), torch.round(img * 255) / 255)


def test_augmented_digits_are_a_function_of_the_step_generator():
    task = Digits(batch=16, augment=True)
    (x, y), (x_again, y_again) = (task.draw(np.random.default_rng([0, 7])) for _ in range(2))
    other, _ = task.draw(np.random.default_rng([0, 8]))
    assert torch.equal(x, x_again) and torch.equal(y, y_again) and not torch.equal(x, other)
    assert x.shape == (16, 1, 32, 32) and float(x.min()) == 0
    assert torch.allclose(x.amax(dim=(1, 2, 3)), torch.ones(16))  # levels as the preprocessing of a file
    plain, _ = Digits(batch=16).draw(np.random.default_rng([0, 7]))
    (train_x, _), _ = data.digits_split()
    assert any(torch.equal(plain[0], t) for t in train_x)  # without augmentation: digits_split's images


def test_digit_files_cover_every_rendering():
    _, (x8, _) = data.digits_8x8()
    groups = {}
    for group, name, files in evaluate_module.digit_files(x8[:3]):
        groups.setdefault(group, []).append(files)
        assert files.dtype == np.uint8 and files.shape[0] == 3
    assert list(groups) == [f"32×32 {m}" for m in render.MODES] + [
        "8×8 file", "64×64 bilinear", "64×64 nearest", "64×64 dark on white (RGB)"]
    assert all(len(groups[f"32×32 {m}"]) == 25 for m in render.MODES)
    assert groups["8×8 file"][0].shape == (3, 8, 8, 1) and groups["64×64 dark on white (RGB)"][0].shape == (3, 64, 64, 3)
    # the unshifted bilinear rendering is digits_split's image rounded to 8 bits
    _, (t, _) = data.digits_split()
    centre = groups["32×32 bilinear"][12]
    assert np.array_equal(centre[..., 0], torch.round(t[:3, 0] * 255).to(torch.uint8).numpy())


# --- training loop ---------------------------------------------------------------------------------------------

def test_a_few_steps_decrease_the_loss(tmp_path):
    torch.set_num_threads(1)
    result = train(tiny_recipe(steps=30, lr=3e-3), tmp_path / "ps.pt", progress=False)
    losses = result["losses"]
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    state = torch.load(tmp_path / "ps.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    assert not checkpoint_path(tmp_path / "ps.pt").exists()


def test_a_seed_reproduces_the_same_steps(tmp_path):
    rec = tiny_recipe("digits-vgg-bn", Digits(batch=8), steps=3)
    first = train(rec, tmp_path / "a.pt", progress=False)
    second = train(rec, tmp_path / "b.pt", progress=False)
    other = train(dataclasses.replace(rec, seed=1), tmp_path / "c.pt", progress=False)
    assert first["losses"] == second["losses"] != other["losses"]
    a, b, c = (torch.load(tmp_path / f, weights_only=True) for f in ("a.pt", "b.pt", "c.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@dataclasses.dataclass(frozen=True)
class CrashingTask:
    """Wraps a task; its `draw` raises after `crash_after` batches (a killed run)."""

    inner: object
    crash_after: int
    calls: list = dataclasses.field(default_factory=list)

    def draw(self, rng):
        if len(self.calls) == self.crash_after:
            raise KeyboardInterrupt("killed")
        self.calls.append(1)
        return self.inner.draw(rng)

    def loss(self, model, x, y):
        return self.inner.loss(model, x, y)


def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    task = Digits(batch=8, augment=True)  # the recipes' task: augmentation draws from the step's generator too
    whole = train(tiny_recipe("digits-vgg", task, steps=6), tmp_path / "whole.pt", progress=False)
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe("digits-vgg", CrashingTask(task, 5), steps=6), out, checkpoint_every=2, progress=False)
    assert checkpoint_path(out).exists() and not out.exists()
    rest = train(tiny_recipe("digits-vgg", task, steps=6), out, checkpoint_every=2, progress=False)
    assert len(rest["losses"]) == 2  # resumed at step 4
    assert rest["losses"] == whole["losses"][4:]
    a, b = torch.load(tmp_path / "whole.pt", weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_killed_run_resumes_inside_its_finetune_stage(tmp_path):
    task = Digits(batch=8, augment=True)

    def rec(finetune_task):
        return dataclasses.replace(tiny_recipe("digits-vgg", task, steps=3),
                                   finetune=Stage(finetune_task, steps=4, lr=1e-4, clip=1.0))

    whole = train(rec(task), tmp_path / "whole.pt", progress=False)
    assert len(whole["losses"]) == whole["steps"] == 7 and whole["skipped"] == 0
    assert whole["losses"][:3] == train(tiny_recipe("digits-vgg", task, steps=3), tmp_path / "one.pt",
                                        progress=False)["losses"]  # stage 1 is the one-stage run
    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        train(rec(CrashingTask(task, 3)), out, checkpoint_every=2, progress=False)
    rest = train(rec(task), out, checkpoint_every=2, progress=False)
    assert rest["losses"] == whole["losses"][5:]  # resumed in the fine-tune stage at its step 2
    a, b = torch.load(tmp_path / "whole.pt", weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    boundary = tmp_path / "boundary.pt"  # killed at the fine-tune's first batch: resumed from the stage boundary
    with pytest.raises(KeyboardInterrupt):
        train(rec(CrashingTask(task, 0)), boundary, checkpoint_every=2, progress=False)
    assert train(rec(task), boundary, checkpoint_every=2, progress=False)["losses"] == whole["losses"][3:]
    c = torch.load(boundary, weights_only=True)
    assert all(torch.equal(a[k], c[k]) for k in a)


@dataclasses.dataclass(frozen=True)
class NanOnce:
    """Wraps a task; the loss of its second step is NaN."""

    inner: object
    calls: list = dataclasses.field(default_factory=list)

    def draw(self, rng):
        return self.inner.draw(rng)

    def loss(self, model, x, y):
        self.calls.append(1)
        loss = self.inner.loss(model, x, y)
        return loss * float("nan") if len(self.calls) == 2 else loss


def test_a_step_with_a_non_finite_loss_is_skipped(tmp_path):
    result = train(tiny_recipe(task=NanOnce(TINY_SR), steps=4), tmp_path / "nan.pt", progress=False)
    assert result["skipped"] == 1 and np.isnan(result["losses"][1])
    assert all(torch.isfinite(v).all() for v in torch.load(tmp_path / "nan.pt", weights_only=True).values())


def test_label_edges_mark_both_sides_of_a_colour_change():
    t = torch.zeros(1, 3, 6, 6)
    t[0, 2, :, 3:] = 1.0
    edges = label_edges(t)[0]
    assert edges[:, 2:4].all() and not edges[:, :2].any() and not edges[:, 4:].any()


def test_flat_columns_probes_the_outputs_flat_pixels_and_its_true_edges_inside_the_crop():
    from pipeline.geometry import flat_edge_classes

    task = FlatColumns(Translation("label"), weight=0.5, probes=4, border=8, true_edges=1)
    y0 = np.zeros((3, 48, 48), dtype=np.float32)
    y0[:, :, 20:] = 1.0   # the model's edge: columns 19 and 20
    y0[:, 40:, :] = 0.5   # and an edge it invents at rows 39-40, next to no target edge
    target = torch.zeros(3, 48, 48)
    target[2, :, 20:] = 1.0  # the target's edge (pixels 19 and 20)
    v = task.impulses(y0, target, np.random.default_rng(0))
    flat, edge = flat_edge_classes(y0, 1)
    flat_at, edge_at = (v[k].abs().sum(0).numpy() > 0 for k in (0, 1))
    inside = np.zeros((48, 48), dtype=bool)
    inside[8:40, 8:40] = True
    assert (flat_at <= flat & inside).all() and flat_at.sum() == 4
    assert sorted(flat_at[a:a + 24, b:b + 24].sum() for a in (0, 24) for b in (0, 24)) == [1, 1, 1, 1]
    assert edge_at.any() and (edge_at <= edge & inside).all() and set(np.nonzero(edge_at)[1]) <= {19, 20}
    assert torch.allclose(v[0][:, torch.from_numpy(flat_at)].norm(dim=0), torch.ones(4))  # unit impulses
    assert task.impulses(y0, torch.zeros(3, 48, 48), np.random.default_rng(0)) is None  # no true edge: no probe
    assert task.impulses(np.zeros((3, 48, 48), np.float32), target, np.random.default_rng(0)) is None


def test_flat_columns_term_is_the_log_ratio_of_flat_and_edge_column_masses():
    from pipeline.models.registry import build

    base = Translation("label", patch=48, batch=3, photos=("chelsea",))
    task = FlatColumns(base, weight=0.5, crops=2, probes=4, border=4)
    x, (y, seeds) = task.draw(np.random.default_rng(3))
    assert torch.equal(x, base.draw(np.random.default_rng(3))[0]) and len(seeds) == 2
    model = build("i2i-label").float()  # trained: its outputs have flat areas and edges
    logs = []
    for i, seed in enumerate(seeds):
        interpreter = interpret(model, x[i:i + 1])
        v = task.impulses(interpreter.output[0].numpy(), y[i], np.random.default_rng(seed))
        if v is not None:
            mass = interpreter.forward(v).abs().sum(dim=(1, 2, 3))
            logs.append(torch.log(mass[0] / mass[1]))
    assert len(logs) == 2  # both crops have flat and true-edge pixels in the trained model's output
    loss = task.loss(model, x, (y, seeds))
    assert loss.item() == pytest.approx(base.loss(model, x, y).item() + 0.5 * torch.stack(logs).mean().item(),
                                        rel=1e-5)
    loss.backward()  # the term reaches the weights: its gradient is not the L1's alone
    with_term = model.model[1].weight.grad.clone()
    model.zero_grad()
    base.loss(model, x, y).backward()
    assert (with_term - model.model[1].weight.grad).abs().max() > 1e-3 * with_term.abs().max()


# --- evaluation ------------------------------------------------------------------------------------------------

def test_psnr_matches_its_definition():
    a = torch.zeros(1, 1, 12, 12)
    b = a.clone()
    b[..., 4:8, 4:8] = 0.1  # mse over the 8x8 interior = 16 * 0.01 / 64
    assert psnr(a, b, border=2) == pytest.approx(-10 * np.log10(16 * 0.01 / 64))
    b[..., 0, 0] = 1.0  # outside the kept interior
    assert psnr(a, b, border=2) == pytest.approx(-10 * np.log10(16 * 0.01 / 64))


def test_bicubic_scores_exactly_zero_gain_and_a_perfect_model_infinite_psnr():
    rep = evaluate(Bicubic(4), SuperResolution(scale=4, channels=3), photos=("coins",))
    assert rep.metrics["gain"] == 0.0
    assert rep.metrics["psnr"] == pytest.approx(rep.metrics["psnr_bicubic"])
    assert 20 < rep.metrics["psnr"] < 40


def test_identity_mapping_is_no_better_than_the_better_baseline():
    rep = evaluate(nn.Identity(), Translation("paint"), photos=("coins",))
    assert rep.metrics["l1"] == rep.metrics["l1_identity"] > 0
    assert rep.metrics["reduction"] <= 0.0
    # the oracle colour map of the normalised photo is far better than the identity on a colour-shifted style
    assert rep.metrics["l1_colour"] < 0.5 * rep.metrics["l1_identity"]


def test_best_affine_colour_recovers_an_affine_colour_map_exactly():
    from pipeline.training.evaluate import best_affine_colour

    x = torch.rand(1, 3, 8, 8) * 0.5 - 0.25
    A, b = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.0, 0.3, 1.1]]), torch.tensor([0.1, -0.2, 0.05])
    y = (torch.einsum("ij,njhw->nihw", A, x) + b.view(1, 3, 1, 1))
    assert torch.allclose(best_affine_colour(x, y), y, atol=1e-5)


def test_translation_batches_pair_each_crop_with_its_own_target():
    task = Translation("woodcut", patch=16, batch=2, photos=("coins",))
    x, y = task.draw(np.random.default_rng(3))
    assert x.shape == y.shape == (2, 3, 16, 16) and -1 <= x.min() and y.max() <= 1
    for crop, target in zip(x, y):
        expected = styles.woodcut(((crop + 1) / 2).permute(1, 2, 0).numpy().astype(np.float64))
        assert torch.allclose((target + 1) / 2, torch.from_numpy(expected).permute(2, 0, 1), atol=1e-6)


def test_translation_noise_moves_the_inputs_only():
    clean, noisy = (Translation("label", patch=32, batch=4, photos=("coins",), noise=n) for n in (0.0, 0.05))
    (x0, y0), (x1, y1) = clean.draw(np.random.default_rng(5)), noisy.draw(np.random.default_rng(5))
    assert torch.equal(y0, y1)  # the same crops, and the targets of the clean crops
    d = (x1 - x0).double()
    assert abs(d.mean().item()) < 0.005 and d.std().item() == pytest.approx(0.05, rel=0.05)


def test_digits_accuracy_counts_correct_answers():
    _, (x, y) = data.digits_split()

    class Oracle(nn.Module):  # answers the first 30 test labels right, then always 0
        def forward(self, inp):
            return torch.nn.functional.one_hot(torch.where(torch.arange(len(inp)) < 30, y[:len(inp)], 0), 10).float()

    rep = evaluate_digits(Oracle(), Digits(), limit=40)
    expected = (30 + int((y[30:40] == 0).sum())) / 40
    assert rep.metrics["accuracy"] == pytest.approx(expected) and rep.metrics["n"] == 40


def test_every_sr_model_has_an_evaluation_task_and_others_a_clear_error():
    assert task_for("bicubic-x3") == SuperResolution(scale=3, channels=3, rgb_range=1.0)
    assert task_for("edsr-baseline-x2") == SuperResolution(scale=2, channels=3, rgb_range=255.0)
    assert task_for("pixelshuffle-x3").channels == 1
    with pytest.raises(ValueError, match="no held-out evaluation for resnet18"):
        task_for("resnet18")


# --- command line ----------------------------------------------------------------------------------------------

def test_train_and_evaluate_commands(tmp_path):
    out = tmp_path / "d.pt"
    runner = CliRunner()
    res = runner.invoke(main, ["train", "digits-vgg", "--steps", "3", "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "3 steps" in res.output and "sha256" in res.output
    build("digits-vgg", weights=out)  # loads strictly into the registry's architecture
    res = runner.invoke(main, ["evaluate", "digits-vgg", "--weights", str(out)])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output and "target worst >= 0.97" in res.output
    assert "64×64 dark on white (RGB)" in res.output and "32×32 nearest" in res.output


def test_train_without_out_never_replaces_the_committed_weights(tmp_path, monkeypatch):
    committed = (WEIGHTS_DIR / "digits-vgg.pt").read_bytes()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["train", "digits-vgg", "--steps", "2", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "train" / "digits-vgg.pt").is_file()
    assert "use it with --weights out/train/digits-vgg.pt" in res.output
    assert (WEIGHTS_DIR / "digits-vgg.pt").read_bytes() == committed


def test_commands_reject_unknown_names_in_one_line():
    runner = CliRunner()
    res = runner.invoke(main, ["train", "resnet18"])
    assert res.exit_code != 0 and "no training recipe for 'resnet18'" in res.output
    res = runner.invoke(main, ["evaluate", "nonesuch"])
    assert res.exit_code != 0 and "unknown model 'nonesuch'" in res.output
    assert len(res.output.strip().splitlines()) == 1


# --- the committed defaults ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(RECIPES))
def test_committed_default_weights_meet_their_targets(name):
    assert (WEIGHTS_DIR / f"{name}.pt").stat().st_size <= 10 * 10 ** 6  # committed weights: 10 MB at most
    torch.set_num_threads(1)
    rec = RECIPES[name]
    rep = evaluate(build(name), rec.task)
    metric, minimum = rec.target
    assert rep.metrics[metric] >= minimum
    for other in rec.beats:
        assert rep.metrics[metric] > evaluate(build(other), task_for(other)).metrics[metric]


def test_sr_edge_term_is_the_l1_of_neighbour_differences():
    task = SuperResolution(scale=4, channels=3, rgb_range=255.0, patch=4, batch=2, edge_weight=0.5)
    x = torch.rand(2, 3, 4, 4) * 255
    model = nn.Upsample(scale_factor=4, mode="nearest")  # blocky output: its differences are 0 inside each block
    target = torch.rand(2, 3, 16, 16) * 255
    out = model(x)
    by_hand = (out - target).abs().mean()
    for axis in (-1, -2):
        by_hand += 0.5 * (out.diff(dim=axis) - target.diff(dim=axis)).abs().mean()
    assert torch.allclose(task.loss(model, x, target), by_hand / 255)
    plain = dataclasses.replace(task, edge_weight=0.0)
    assert torch.allclose(plain.loss(model, x, target), (out - target).abs().mean() / 255)
    assert task.loss(model, x, out) == 0  # a perfect output scores 0 on both terms
