"""Classifier analyses: score decomposition, pixel discussions / votes, FGSM, the report and the CLI."""
from __future__ import annotations

import html
import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline import classify as C
from pipeline import classify_report as R
from pipeline.cli import main
from pipeline.interpreter import interpret
from pipeline.models.registry import build
from pipeline.training.data import digits_split

DIGITS = ("digits-vgg", "digits-vgg-bn")


@pytest.fixture(scope="module")
def digits():
    """Four test-split digits (1, 1, 32, 32) in [0, 1] with their labels."""
    _, (x, y) = digits_split()
    return [(x[i:i + 1], int(y[i])) for i in range(4)]


def _digits_model(name):
    """Trained weights when committed, else the seeded random init (both are real networks for these identities)."""
    try:
        return build(name)
    except ValueError:
        return build(name, "random")


def _assert_reproduces(dec: C.Decomposition, rtol=1e-4):
    total = dec.input_term + dec.contributions.sum(0)
    scale = np.abs(dec.scores).max()
    np.testing.assert_allclose(total, dec.scores, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name", DIGITS)
def test_input_term_plus_contributions_is_score(name, digits):
    model = _digits_model(name)
    for x0, _ in digits[:2]:
        li = interpret(model, x0)
        dec = C.decompose(li, x0)
        _assert_reproduces(dec)
        # the top-1 record: shares of the same score, in network order, one per bias source
        rec = dec.record()
        assert rec["top1"] == int(model(x0).argmax())
        assert rec["score"] == pytest.approx(float(model(x0).detach().max()), rel=1e-5)
        parts = rec["input_term"] + sum(c["value"] for c in rec["contributions"])
        assert parts == pytest.approx(rec["score"], rel=1e-4, abs=1e-6)
        assert rec["residual_share"] == pytest.approx(rec["residual"] / rec["score"])
        assert [c["name"] for c in rec["contributions"]] == list(li.contributions())
        assert len(rec["contributions"]) >= 4  # every conv / linear bias (and BN shift) is a source


@pytest.mark.parametrize("name", DIGITS)
def test_contributions_grouped_by_layer_sum_to_the_score(name, digits):
    """--group layer: a conv with its batch norm is one source; the groups partition the raw sources, each is the
    sum of its sources, and input term + groups = every score (and the grouped PDs still sum to the scores)."""
    model = _digits_model(name)
    x0, _ = digits[3]
    li = interpret(model, x0)
    groups = C.layer_groups(li)
    assert [s for members in groups.values() for s in members] == li.sources  # a partition, in network order
    # 4 convolutions and 2 linear layers, with or without batch norm
    assert len(groups) == 6 and all(len(m) == (2 if name.endswith("-bn") and "features" in g else 1)
                                    for g, m in groups.items())
    if name.endswith("-bn"):
        assert list(groups)[0] == "features.0 + features.1"
        assert groups["features.0 + features.1"] == ["features.0 (bias)", "features.1 (shift)"]
    raw = C.decompose(li, x0)
    dec = C.decompose(li, x0, groups)
    _assert_reproduces(dec)
    by_name = dict(zip(raw.names, raw.contributions))
    for g, row, members in zip(dec.names, dec.contributions, dec.members):
        np.testing.assert_allclose(row, sum(by_name[m] for m in members), rtol=0, atol=1e-9)
    rec = dec.record()
    assert rec["input_term"] + sum(c["value"] for c in rec["contributions"]) == pytest.approx(rec["score"], rel=1e-4)
    assert [c["sources"] for c in rec["contributions"]] == list(groups.values())
    pd = C.pixel_discussions(li, x0, dec, list(range(10)), C.bias_weights(li, dec, groups)[1])
    np.testing.assert_allclose(pd.sum((1, 2)), dec.scores, rtol=0, atol=1e-4 * np.abs(dec.scores).max())


def test_layer_groups_of_a_resnet_keep_a_norm_after_an_addition_alone():
    torch.manual_seed(2)
    model = build("resnet18", "random")
    x0 = torch.rand(1, 3, 32, 32)
    li = interpret(model, x0)
    groups = C.layer_groups(li)
    assert [s for members in groups.values() for s in members] == li.sources
    assert groups["net.conv1 + net.bn1"] == ["net.bn1 (shift)"]  # a conv without bias: the layer is its norm
    assert groups["sub (offset)"] == ["sub (offset)"]  # the ImageNet mean subtracted from the input: no layer
    _assert_reproduces(C.decompose(li, x0, groups))


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_torchvision_contributions_reproduce_all_1000_scores(name):
    torch.manual_seed(1)
    model = build(name, "random")
    x0 = torch.rand(1, 3, 64, 64)
    li = interpret(model, x0)
    dec = C.decompose(li, x0)
    assert dec.scores.shape == (1000,) and dec.contributions.shape[1] == 1000
    np.testing.assert_allclose(dec.scores, model(x0).detach().double().numpy()[0], rtol=1e-5, atol=1e-5)
    _assert_reproduces(dec)
    assert dec.contributions.shape[0] >= (8 if name == "vgg11" else 20)


@pytest.mark.parametrize("name", DIGITS)
def test_pixel_discussions_sum_to_scores_and_votes_are_their_argmax(name, digits):
    model = _digits_model(name)
    x0, _ = digits[1]
    li = interpret(model, x0)
    dec = C.decompose(li, x0)
    classes = list(range(10))
    pd = C.pixel_discussions(li, x0, dec, classes)
    assert pd.shape == (10, 32, 32)
    np.testing.assert_allclose(pd.sum((1, 2)), dec.scores, rtol=0, atol=1e-4 * np.abs(dec.scores).max())
    # the input part alone sums to the input term F·x0 (x0 ⊙ Fᵀe_k, channels summed)
    inp = C.input_discussions(li, x0, classes)
    np.testing.assert_allclose(inp.sum((1, 2)), dec.input_term, rtol=0, atol=1e-4 * np.abs(dec.scores).max())
    # bias weights: one non-negative pixel distribution per source
    names, w = C.bias_weights(li)
    assert names == dec.names and w.shape == (len(names), 32, 32)
    assert (w >= 0).all() and np.allclose(w.sum((1, 2)), 1.0)
    # votes, built 3 classes at a time with a running argmax, equal the argmax of the full stack
    votes = C.pixel_votes(li, x0, dec, chunk=3, keep=4)
    np.testing.assert_array_equal(votes.winner, pd.argmax(0))
    # float32 transposes of batches of 3 and of 10 classes differ in their last bits
    np.testing.assert_allclose(votes.kept, pd[:4], rtol=0, atol=1e-5 * np.abs(pd).max())
    assert sum(votes.shares.values()) == pytest.approx(1.0)
    for k, s in votes.shares.items():
        assert s == pytest.approx((votes.winner == k).mean())
    # a vote among the top 3 classes only: winners come from that set and beat the other two there
    top3 = dec.top(3)
    sub = C.pixel_votes(li, x0, dec, top3)
    assert set(np.unique(sub.winner)) <= set(top3)
    np.testing.assert_array_equal(sub.winner, np.asarray(top3)[pd[top3].argmax(0)])


def test_fgsm_step_has_sup_norm_eps_and_follows_the_gradient_sign(digits):
    """The sign of CE's gradient taken in float64 (a float64 copy of the model): in float32, 1 − p of a confident
    image underflows and CE's own gradient loses the target's term, flipping many pixels' steps."""
    import copy

    model = _digits_model("digits-vgg")
    x0, label = digits[2]
    x = x0.double().requires_grad_(True)
    torch.nn.functional.cross_entropy(copy.deepcopy(model).double()(x), torch.tensor([label])).backward()
    x32 = x0.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x32), torch.tensor([label])).backward()
    assert (x32.grad.sign() != x.grad.sign()).float().mean() > 0.02  # a confident image: float32 CE is wrong
    for eps in (0.03, 0.2):
        x_adv, delta = C.fgsm(model, x0, label, eps)
        assert float(delta.abs().max()) == pytest.approx(eps)
        assert (delta != eps * x.grad.sign().float()).float().mean() <= 0.002
        assert torch.equal(x_adv, (x0 + delta).clamp(0, 1))
        assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert not model.training
    with pytest.raises(ValueError):
        C.fgsm(model, x0, label, -0.1)


def test_analyse_attacked_records(digits):
    model = _digits_model("digits-vgg-bn")
    x0, label = digits[0]
    clean, attacked = C.analyse_attacked(model, x0, [0.05, 0.3], label=label, top=2)
    assert [a.record["eps"] for a in attacked] == [0.05, 0.3]
    for a in [clean] + attacked:
        rec = a.record
        assert rec["top_classes"][0] == rec["top1"] and len(rec["top_classes"]) == 2
        assert a.pd.shape == (2, 32, 32) and a.winner.shape == (32, 32)
        assert a.pd[0].sum() == pytest.approx(rec["score"], rel=1e-4, abs=1e-6)
        assert a.shares.sum() == pytest.approx(1.0, rel=1e-4)
        assert rec["votes"]["top1_share"] == pytest.approx((a.winner == rec["top1"]).mean())
    for a in attacked:
        assert a.record["target"] == label and a.record["clean_top1"] == clean.record["top1"]
        assert a.record["votes"]["clean_top1_share"] == pytest.approx((a.winner == clean.record["top1"]).mean())
        assert float(np.abs(a.x - clean.x).max()) <= a.record["eps"] + 1e-6


def test_not_a_classifier():
    model = build("bicubic-x2")
    x0 = torch.rand(1, 3, 8, 8)
    with pytest.raises(C.NotAClassifier):
        C.decompose(interpret(model, x0), x0)


def test_residual_table():
    recs = [{"residual_share": 0.5, "attacks": [{"eps": 0.1, "residual_share": 1.0}]},
            {"residual_share": 1.0, "attacks": [{"eps": 0.1, "residual_share": 2.0}]}]
    (row,) = C.residual_table({"m": recs})
    assert row == {"model": "m", "images": 2, "mean": 0.75, "std": 0.25, "fgsm 0.1 mean": 1.5, "fgsm 0.1 std": 0.5}


def test_summary():
    def rec(top1, share, votes, label=None, **extra):
        return {"top1": top1, "label": label, "residual_share": share, "votes": {"top1_share": votes, **extra}}

    a1 = rec(2, 0.4, 0.1, clean_top1_share=0.0) | {"eps": 0.1, "top1_changed": True}
    a2 = rec(1, 0.6, 0.3, clean_top1_share=0.3) | {"eps": 0.1, "top1_changed": False}
    recs = [rec(1, 0.5, 0.5, label=1) | {"attacks": [a1]}, rec(1, 1.0, 0.7, label=0) | {"attacks": [a2]}]
    clean, att = C.summary(recs)
    assert clean == {"condition": "clean", "eps": None, "images": 2, "accuracy": 0.5, "residual_share mean": 0.75,
                     "residual_share std": 0.25, "vote_agreement mean": pytest.approx(0.6),
                     "vote_agreement std": pytest.approx(0.1)}
    assert att["accuracy"] == 0.0 and att["top1_changed"] == 0.5 and att["images"] == 2
    assert att["clean_top1_votes mean"] == pytest.approx(0.15) and att["vote_agreement mean"] == pytest.approx(0.2)


def test_load_input_converts_and_resizes(tmp_path):
    from pipeline.images import ImageError
    from pipeline.models.registry import spec

    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :30] = (255, 0, 0)
    iio.imwrite(tmp_path / "a.png", rgb)
    # digits: a drawing, fitted into 32×32 keeping its aspect ratio (32×21, padded) and levelled to 0..1
    x, rec = R.load_input(tmp_path / "a.png", spec("digits-vgg"), (32, 32))
    assert x.shape == (1, 1, 32, 32) and x.dtype == torch.float32 and rec["fitted"] == [21, 32]
    assert float(x[0, 0, 16, 0]) == pytest.approx(1) and float(x[0, 0, 16, -1]) == 0 and float(x[0, 0, 2, 0]) == 0
    x, rec = R.load_input(tmp_path / "a.png", spec("cyclegan-style_vangogh"), (16, 16), crop_ratio=0.875)
    assert x.shape == (1, 3, 16, 16) and float(x.min()) == -1 and float(x.max()) == pytest.approx(1)
    # 60×40 → shorter side 16 / 0.875 = 18 (27×18), centre 16×16 crop: columns 5..20 of 27 straddle the edge
    assert float(x[0, 0, 8, 0]) == pytest.approx(1) and float(x[0, 0, 8, -1]) == pytest.approx(-1)
    assert rec["method"] == "photo" and rec["resized"] == [18, 27]
    iio.imwrite(tmp_path / "g.png", rgb[:, :, 0])
    x, _ = R.load_input(tmp_path / "g.png", spec("vgg11"), (8, 8))
    assert x.shape == (1, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bad.png"):
        R.load_input(tmp_path / "bad.png", spec("digits-vgg"), (32, 32))


def test_report_for_both_digits_models(tmp_path, monkeypatch):
    """The whole command on both digits models, with FGSM at two ε and Table 1; then a resumed run."""
    try:
        [build(n) for n in DIGITS]
        names, extra = list(DIGITS), []
    except ValueError:  # no trained files yet: random init, a single model per run then
        names, extra = ["digits-vgg"], ["--weights", "random"]
    args = ["classify", "--dataset", "digits", "--limit", "3", "--attack", "fgsm", "--eps", "0.05", "--eps", "0.2",
            "--figures", "2", "--table", "--out", str(tmp_path), *extra]
    for name in names:
        args += ["--model", name]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    for name in names:
        out = tmp_path / name if len(names) > 1 else tmp_path
        recs = json.loads((out / "results.json").read_text())
        assert len(recs) == 3
        for r in recs:
            assert {"image", "top1", "score", "input_term", "residual", "contributions", "attacks"} <= set(r)
            total = r["input_term"] + sum(c["value"] for c in r["contributions"])
            assert total == pytest.approx(r["score"], rel=1e-4, abs=1e-6)
            assert [a["eps"] for a in r["attacks"]] == [0.05, 0.2]
        for f in ("index.html", "results.csv", "contributions.csv", "contributions.png", "discussion-0.png",
                  "discussion-1.png", "attack-0.png", "table.md", "summary.json"):
            assert (out / f).stat().st_size > 0, f
        assert "contributions.png" in (out / "index.html").read_text()
    table = (tmp_path / "table.md").read_text()
    assert all(n in table for n in names) and "fgsm 0.2" in table
    # resume: cached images are not analysed again
    monkeypatch.setattr(C, "analyse", lambda *a, **k: pytest.fail("recomputed a cached image"))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output


def test_cli_on_digit_files_records_preprocessing_and_groups(tmp_path):
    """Digit files of other sizes and polarities through the command; --group source vs layer: same scores,
    same sums, grouped names."""
    from pipeline.training import data, render

    _, (x8, y) = data.digits_8x8()
    files = tmp_path / "files"
    files.mkdir()
    iio.imwrite(files / "a-64-dark-on-white.png", 255 - torch.round(render.upsample(x8[:1], 64, "bilinear")[0, 0] * 255)
                .to(torch.uint8).numpy())
    iio.imwrite(files / "b-8x8.png", torch.round(x8[1, 0] * 255).to(torch.uint8).numpy())
    out = {}
    for group in ("layer", "source"):
        args = ["classify", "--model", "digits-vgg-bn", "--images", str(files), "--figures", "1", "--group", group,
                "--out", str(tmp_path / group)]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        out[group] = json.loads((tmp_path / group / "results.json").read_text())
    for layer, source in zip(out["layer"], out["source"]):
        assert layer["score"] == source["score"] and layer["top1"] == source["top1"]
        for r in (layer, source):
            assert r["input_term"] + sum(c["value"] for c in r["contributions"]) == pytest.approx(r["score"], rel=1e-4)
        assert len(layer["contributions"]) == 6 and len(source["contributions"]) == 10
        assert layer["contributions"][0]["name"] == "features.0 + features.1"
    a, b = out["layer"]
    assert a["preprocessing"]["polarity"] == "inverted" and a["preprocessing"]["source_size"] == [64, 64]
    assert b["preprocessing"]["polarity"] == "kept" and b["preprocessing"]["source_size"] == [8, 8]
    assert [r["top1"] for r in out["layer"]] == [int(y[0]), int(y[1])]  # the trained model reads both files


@pytest.mark.parametrize("args, message", [
    (["--model", "digits-vgg", "--weights", "random", "--dataset", "digits", "--eps", "0.1"], "--attack"),
    (["--model", "digits-vgg", "--weights", "random", "--dataset", "digits", "--size", "28"], "32×32"),
    (["--model", "bicubic-x2", "--dataset", "digits"], "not a classifier"),
    (["--model", "vgg-12", "--dataset", "digits"], "unknown model"),
    (["--model", "vgg11", "--weights", "random", "--dataset", "digits"], "digits"),
])
def test_cli_errors(tmp_path, args, message):
    res = CliRunner().invoke(main, ["classify", *args, "--out", str(tmp_path)])
    assert res.exit_code != 0 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_cli_refuses_a_folder_of_other_files(tmp_path):
    (tmp_path / "thesis.tex").write_text("mine")
    res = CliRunner().invoke(main, ["classify", "--model", "digits-vgg", "--dataset", "digits", "--limit", "2",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 1 and "is not empty and is not an output of linterp classify" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]


def test_cli_unreadable_image(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    res = CliRunner().invoke(main, ["classify", "--model", "digits-vgg", "--weights", "random", "--images",
                                    str(tmp_path / "broken.png"), "--out", str(tmp_path / "o")])
    assert res.exit_code != 0 and "broken.png" in res.output, res.output


def test_cli_on_rgb_photos_with_an_imagenet_classifier(tmp_path):
    """A torchvision classifier (random init, 32 px) on PNG photos of other sizes: 1000 classes, a 40-class vote."""
    import skimage.data

    photos = tmp_path / "photos"
    photos.mkdir()
    iio.imwrite(photos / "coffee.png", skimage.data.coffee()[::8, ::8])
    iio.imwrite(photos / "camera.png", skimage.data.camera()[::8, ::8])  # grey: repeated to RGB
    args = ["classify", "--model", "vgg11", "--weights", "random", "--images", str(photos), "--size", "32",
            "--vote-classes", "40", "--top", "2", "--figures", "1", "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    recs = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["image"] for r in recs] == ["camera.png", "coffee.png"]
    for r in recs:
        assert r["votes"]["classes"] == 40 and 0 <= r["top1"] < 1000
        assert sum(s["share"] for s in r["votes"]["shares"]) <= 1 + 1e-9
        total = r["input_term"] + sum(c["value"] for c in r["contributions"])
        assert total == pytest.approx(r["score"], rel=1e-4, abs=1e-5)
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    page = (tmp_path / "out" / "index.html").read_text()
    assert all(html.escape(f"{r['top1']} {_IMAGENET_CATEGORIES[r['top1']]}") in page for r in recs)
    assert (tmp_path / "out" / "discussion-0.png").stat().st_size > 0
    # a changed file under the same name is analysed again, an unchanged one comes from the cache
    iio.imwrite(photos / "coffee.png", skimage.data.coffee()[::-8, ::8])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert again[0] == recs[0] and again[1]["score"] != recs[1]["score"]


def test_image_folders_give_their_image_files_only(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()  # a folder whose name looks like an image's
    assert [p.name for p in R.image_files([tmp_path])] == ["a.JPG", "b.png"]


CONV_HEAD = """import torch.nn as nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 5, 1))
"""


def test_a_classifier_with_a_1x1_conv_head_gives_scores_of_shape_1_k_1_1(tmp_path):
    """A head that is a 1×1 convolution after global pooling: output (1, K, 1, 1), a classifier as docs/user-models.md
    says; every identity holds as for (1, K), and the CLI analyses it, attack included."""
    torch.manual_seed(0)
    model = build_conv_head(tmp_path)
    x0 = torch.rand(1, 3, 12, 12)
    a = C.analyse(model, x0, top=2)
    scores = model(x0).detach().double().reshape(-1).numpy()
    assert a.record["top1"] == int(scores.argmax()) and a.record["score"] == pytest.approx(scores.max(), rel=1e-5)
    assert a.record["input_term"] + sum(c["value"] for c in a.record["contributions"]) == pytest.approx(
        a.record["score"], rel=1e-5)
    np.testing.assert_allclose(a.pd.sum((1, 2)), scores[a.record["top_classes"]], rtol=1e-5)
    x_adv, delta = C.fgsm(model, x0, 1, 0.1)
    assert float(delta.abs().max()) == pytest.approx(0.1)
    photo = tmp_path / "p.png"
    iio.imwrite(photo, (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    res = CliRunner().invoke(main, ["classify", "--model", f"{tmp_path / 'head.py'}:make", "--images", str(photo),
                                    "--size", "16", "--attack", "fgsm", "--eps", "0.05", "--figures", "1", "--quiet",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"head.py:make: 1 image -> {tmp_path / 'out' / 'index.html'}" in res.output  # not "1 images"
    assert "analysis of 1 image</h1>" in (tmp_path / "out" / "index.html").read_text()
    (rec,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert rec["votes"]["classes"] == 5 and rec["attacks"][0]["eps"] == 0.05


def build_conv_head(folder):
    (folder / "head.py").write_text(CONV_HEAD)
    import runpy

    return runpy.run_path(str(folder / "head.py"))["make"]().eval()


def test_unreadable_images_among_good_ones_are_skipped_and_named(tmp_path):
    """One broken file in a folder does not stop the run: the others are analysed, the broken ones named on stderr
    and in the report (without their path); a folder of broken files only is one error line."""
    from skimage.data import camera

    folder = tmp_path / "imgs"
    folder.mkdir()
    iio.imwrite(folder / "a.png", camera()[::16, ::16])
    (folder / "b.png").write_bytes(b"\x89PNG broken")
    iio.imwrite(folder / "c.png", camera()[::-16, ::16])
    args = ["classify", "--model", "digits-vgg", "--weights", "random", "--quiet", "--figures", "1"]
    res = CliRunner().invoke(main, [*args, "--images", str(folder), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "skipped b.png" in res.output
    recs = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["image"] for r in recs] == ["a.png", "c.png"]
    page = (tmp_path / "o" / "index.html").read_text()
    assert "b.png" in page and str(folder) not in page
    res = CliRunner().invoke(main, [*args, "--images", str(folder / "b.png"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 1 and "b.png" in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_fgsm_refuses_a_model_with_a_single_score(tmp_path):
    """Cross-entropy over one score is 0 whatever the input: FGSM has no gradient to follow and must not make up a
    step (it used to step along −∇s); the analysis itself works, and the CLI says why in one line."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(1))
    x0 = torch.rand(1, 3, 8, 8)
    model(x0)
    a = C.analyse(model.eval(), x0)
    assert a.record["top1"] == 0 and a.record["votes"]["top1_share"] == 1.0
    with pytest.raises(ValueError, match="at least 2 class scores"):
        C.fgsm(model, x0, 0, 0.1)
    (tmp_path / "one.py").write_text("import torch.nn as nn\n\n\ndef make():\n    return nn.Sequential("
                                     "nn.Conv2d(3, 2, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), "
                                     "nn.Linear(2, 1))\n")
    iio.imwrite(tmp_path / "p.png", np.zeros((9, 9, 3), np.uint8))
    res = CliRunner().invoke(main, ["classify", "--model", f"{tmp_path / 'one.py'}:make", "--images",
                                    str(tmp_path / "p.png"), "--size", "16", "--attack", "fgsm", "--eps", "0.1",
                                    "--out", str(tmp_path / "out")])
    assert res.exit_code == 1 and "at least 2" in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_a_model_of_a_fixed_input_size_is_told_about_size_once(tmp_path):
    """A Linear on flattened features takes one input size: probed at the default 224, the error says that --size
    sets the side, in one line that names the model once."""
    (tmp_path / "flat.py").write_text("import torch.nn as nn\n\n\ndef make():\n    return nn.Sequential("
                                      "nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), "
                                      "nn.Linear(2 * 16 * 16, 3))\n")
    iio.imwrite(tmp_path / "p.png", np.zeros((20, 20, 3), np.uint8))
    args = ["classify", "--model", f"{tmp_path / 'flat.py'}:make", "--images", str(tmp_path / "p.png"), "--quiet"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    assert "224×224" in res.output and "--size" in res.output and res.output.count("flat.py:make") == 1, res.output
    res = CliRunner().invoke(main, [*args, "--size", "16", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output


def test_your_own_1000_class_model_is_not_given_imagenet_names():
    """Class names come from the registry: a user model with 1000 outputs is labelled by index (its classes need not
    be ImageNet's); torchvision's ImageNet classifiers and the digits models keep theirs."""
    from pipeline.commands.classify import _class_names

    assert _class_names("net.py:make", 1000) is None and _class_names("mylab.nets:make", 1000) is None
    assert _class_names("digits_net.py:make", 10) is None
    assert _class_names("vgg11", 1000)[0] == "tench" and _class_names("digits-vgg", 10)[3] == "3"


def test_several_models_at_random_init_in_one_run(tmp_path):
    """--weights random is no file: it goes with several --model (a file still goes with one only), and --table
    gathers them."""
    args = ["classify", "--model", "digits-vgg", "--model", "digits-vgg-bn", "--dataset", "digits", "--limit", "1",
            "--figures", "0", "--quiet", "--table"]
    res = CliRunner().invoke(main, [*args, "--weights", "random", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a" / "digits-vgg-bn" / "results.json").exists() and (tmp_path / "a" / "table.md").exists()
    res = CliRunner().invoke(main, [*args, "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "b")])
    assert res.exit_code != 0 and "single --model" in res.output, res.output


def test_a_file_that_cannot_be_opened_is_skipped_and_named_not_fatal(tmp_path):
    """A link named as an image that leads nowhere (as a file without read permission, an I/O error) is an
    unreadable file like a broken one: the others are analysed, it is named on stderr and in the report. It was
    passed over silently (the folder listing dropped it), and a file whose content could not be hashed stopped
    the whole run with an error that did not name it."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    iio.imwrite(folder / "a.png", (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8))
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    build_conv_head(tmp_path)
    res = CliRunner().invoke(main, ["classify", "--model", f"{tmp_path / 'head.py'}:make", "--images", str(folder),
                                    "--size", "16", "--figures", "0", "--quiet", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "skipped gone.png: cannot read image" in res.output
    assert [r["image"] for r in json.loads((tmp_path / "o" / "results.json").read_text())] == ["a.png"]
    assert "Skipped, could not be read: gone.png." in (tmp_path / "o" / "index.html").read_text()


MIXED = """import torch
import torch.nn as nn


def make():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()
"""


def test_files_of_mixed_kinds_with_your_own_model_are_recorded_truthfully_and_resumed(tmp_path):
    """RGBA with a transparent background, CMYK JPEG, 16-bit grey, 8×8 and 400×20 files through your own conv net
    with batch norm: each record says what the file held, input term + layer contributions = score (in
    results.json, and for the cached input through the model itself), the maps have the input's shape, and a
    re-run reads every image back from the cache."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[6:18, 6:18] = 200
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (20, 25, 3), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (18, 18), dtype=np.uint16)).save(folder / "deep.png")
    iio.imwrite(folder / "small.png", rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    iio.imwrite(folder / "wide.png", rng.integers(0, 255, (20, 400, 3), dtype=np.uint8))
    (tmp_path / "net.py").write_text(MIXED)
    args = ["classify", "--model", f"{tmp_path / 'net.py'}:make", "--images", str(folder), "--size", "16",
            "--figures", "1", "--quiet", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    recs = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {r["image"]: (r["preprocessing"]["source_channels"], r["preprocessing"]["source_colour"]) for r in recs} \
        == {"cmyk.jpg": (4, "CMYK converted to RGB"), "deep.png": (1, "grey"), "rgba.png": (4, "RGBA"),
            "small.png": (3, "RGB"), "wide.png": (3, "RGB")}
    import runpy

    model = runpy.run_path(str(tmp_path / "net.py"))["make"]()
    stems = sorted((tmp_path / "o" / "images").glob("*.json"))
    assert len(stems) == len(recs)
    for stem, full in zip(stems, recs):  # the cache in input order, as results.json
        rec = json.loads(stem.read_text())["records"][0]
        assert rec == {k: v for k, v in full.items() if k in rec}
        assert rec["input_term"] + sum(c["value"] for c in rec["contributions"]) == pytest.approx(rec["score"],
                                                                                                 rel=1e-5)
        with np.load(stem.with_suffix(".npz")) as z:
            x, pd, winner = z["x0"], z["pd0"], z["winner0"]
        assert x.shape == (3, 16, 16) and pd.shape[1:] == winner.shape == (16, 16)
        scores = model(torch.from_numpy(x)[None]).detach().double()[0].numpy()
        assert rec["score"] == pytest.approx(scores.max(), rel=1e-5)
        np.testing.assert_allclose(pd.sum((1, 2)), scores[rec["top_classes"]], rtol=1e-5)
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "images").iterdir()}
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "images").iterdir()} == cached
