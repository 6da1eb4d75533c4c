"""`linterp geometry`: adaptivity, the flashlight and the mass indicators, on real stores on disk.

Known answers: bicubic columns are translates of one kernel (adaptivity 0, flashlight exactly at chance, the
diagonal share of the analytic kernel); a store whose columns are the local image patch is a perfect
flashlight; columns unrelated to the image and shuffled locations score at chance; an edge-aware (bilateral)
upscaler is found; the identity / instance-normalised identity / global-mean maps have the diagonal share,
reach and global share their matrices imply; store and interpreter give the same figures.
"""
import functools
import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_compute import bicubic_matrix
from torch import nn

from pipeline import geometry as geo
from pipeline import images
from pipeline.cli import main
from pipeline.compute import Source, compute, source_key
from pipeline.interpreter import interpret
from pipeline.models import build, spec
from pipeline.store import create_store, layout, open_store

pytestmark = pytest.mark.timeout(300)


# ---- stores ---------------------------------------------------------------------------------------------

def dense_store(path, F, y0, *, model="synthetic", tile=8, mode="columns"):
    """A complete store holding the dense matrix F (C_out, H_out, W_out, C_in, H, W) and output y0."""
    F = np.asarray(F, dtype=np.float32)
    in_shape, out_shape = F.shape[3:], F.shape[:3]
    shards, chunks, tasks = layout(in_shape, out_shape, tile, mode)
    y0 = np.asarray(y0, dtype=np.float32)
    store = create_store(path, identity={"model": model}, attrs={"model": model}, x0=np.zeros(in_shape),
                         y0=y0, residual=np.zeros_like(y0), shards=shards, chunks=chunks, tasks=tasks)
    store.F[...] = F
    store.update_attrs(complete=True)
    return store


def module_store(path, make, x0, name):
    """A store computed by the compute module for a small torch module (``make()`` builds it)."""
    identity = {"model": name, "x0": float(x0.sum())}
    return compute(path, Source(make, x0, source_key(identity)), identity=identity, attrs={"model": name},
                   device="cpu", progress=False)


def registry_store(path, name, x0, tile=None):
    """A store of a registry model with random (seeded) weights."""
    identity = {"model": name, "weights_sha256": "random", "x0": float(x0.sum())}
    src = Source(functools.partial(build, name, "random"), x0, source_key(identity))
    return compute(path, src, identity=identity, attrs={"model": name}, tile=tile, device="cpu", progress=False)


def face_gray(size):
    """The built-in face in grey, [0, 1], cropped to size × size from its top-left corner + 8."""
    _, img = images.default_image()
    return img[8:8 + size, 8:8 + size].astype(np.float32).mean(-1) / 255


def upscaler_store(path, column, lr=20, scale=4):
    """A 1-channel ×scale store over the face, F[0, :, :, 0, y, x] = column(y0 (H_out, W_out), y, x)."""
    y0 = face_gray(lr * scale)
    F = np.zeros((1, lr * scale, lr * scale, 1, lr, lr), dtype=np.float32)
    for y in range(lr):
        for x in range(lr):
            F[0, :, :, 0, y, x] = column(y0, y, x, scale)
    return dense_store(path, F, y0[None], model="synthetic-x4")


def chebyshev(shape, y, x, scale):
    """(H_out, W_out) Chebyshev distance, in input pixels, of each output pixel from input pixel (y, x)."""
    return np.maximum.outer(np.abs(np.arange(shape[0]) // scale - y), np.abs(np.arange(shape[1]) // scale - x))


def gaussian(shape, y, x, scale, sigma=1.0):
    u, v = np.mgrid[0:shape[0], 0:shape[1]]
    cy, cx = scale * y + (scale - 1) / 2, scale * x + (scale - 1) / 2
    return np.exp(-((u - cy) ** 2 + (v - cx) ** 2) / (2 * (sigma * scale) ** 2))


def at_chance(figures, k=3.0):
    """The shuffled control (mean over permutations) is within k of its standard errors of chance."""
    return (abs(figures["flashlight_control_top1"] - figures["flashlight_chance"])
            <= k * figures["flashlight_control_top1_se"]
            and abs(figures["flashlight_control_mrr"] - figures["flashlight_mrr_chance"])
            <= k * figures["flashlight_control_mrr_se"])


@pytest.fixture(scope="module")
def bicubic(tmp_path_factory):
    """bicubic-x4 through `linterp compute` on a 20×20 crop of the face (RGB)."""
    path = tmp_path_factory.mktemp("geo") / "bicubic.zarr"
    result = CliRunner().invoke(main, ["compute", "--model", "bicubic-x4", "--crop", "30,30,20,20", "--out",
                                       str(path), "--tile", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    return open_store(path)


# ---- pure functions -------------------------------------------------------------------------------------

def test_rank_credit_counts_ties_as_random_order():
    n = 5
    harmonic = sum(1 / r for r in range(1, n + 1))
    credit, rr = geo.rank_credit(np.zeros((3, n)), np.array([0, 2, 4]))
    assert np.allclose(credit, 1 / n) and np.allclose(rr, harmonic / n)
    scores = np.array([[3.0, 1, 1, 0, 0], [2.0, 2, 1, 0, 0], [5.0, 4, 3, 2, 1]])
    credit, rr = geo.rank_credit(scores, np.array([0, 1, 3]))
    assert np.allclose(credit, [1, 0.5, 0]) and np.allclose(rr, [1, (1 + 1 / 2) / 2, 1 / 4])


def test_cross_validation_chooses_each_folds_descriptor_on_the_other_fold():
    rr = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])  # descriptor 0 is right on fold 0 only
    folds = np.array([0, 0, 1, 1])
    credit, out, chosen = geo.cross_validated(rr, rr, folds)
    assert chosen == [1, 0] and np.array_equal(out, [0, 0, 0, 0])


def test_flat_and_edge_pixels_come_from_the_output_gradient():
    y0 = np.zeros((3, 24, 24), dtype=np.float32)
    y0[:, 8:16, 8:16] = 1.0  # a square on a flat background
    flat, edge = geo.flat_edge_classes(y0, scale=1)
    assert edge[8, 8:16].all() and edge[7, 8:16].all() and not edge[11, 11] and not edge[0, 0]
    assert flat[0, 0] and flat[11, 11] and not flat[6, 10] and not flat[9, 10]


# ---- super-resolution: bicubic, perfect, random and edge-aware columns ---------------------------------

def test_bicubic_columns_have_adaptivity_zero_and_flashlight_exactly_at_chance(bicubic):
    g = geo.measure_store(bicubic, samples=100, seed=1)
    n = g["flashlight_candidates"]
    assert g["samples"] == n == 100 and g["scale"] == 4
    assert g["adaptivity"] < 1e-5  # rounding only
    assert g["flashlight_noise_columns"] == n  # every adaptive part is rounding: all candidates tie
    assert g["flashlight_top1"] == pytest.approx(1 / n, abs=1e-12) == g["flashlight_chance"]
    assert g["flashlight_mrr"] == pytest.approx(g["flashlight_mrr_chance"], abs=1e-12)
    assert g["flashlight_control_top1"] == pytest.approx(1 / n, abs=1e-12) and g["flashlight_p"] == 1.0
    # mass of the analytic bicubic kernel (interior pixels): own 4×4 block, and 90 % within one pixel
    k = np.abs(bicubic_matrix(20, 4)[:, 10])
    assert g["diagonal_share"] == pytest.approx((k[40:44].sum() / k.sum()) ** 2, rel=1e-5)
    assert g["reach90"] == 1.0 and g["global_share"] == 0.0 and g["zero_columns"] == 0


def test_columns_that_are_the_local_patch_are_a_perfect_flashlight(tmp_path):
    store = upscaler_store(tmp_path / "patch.zarr",
                           lambda y0, y, x, s: y0 * (chebyshev(y0.shape, y, x, s) <= geo.RADIUS))
    g = geo.measure_store(store, samples=144)
    assert g["flashlight_candidates"] == 144  # every interior pixel of 20×20 at radius 4
    assert g["flashlight_top1"] == 1.0 and g["flashlight_mrr"] == 1.0
    assert g["flashlight_descriptors"] == ["patch", "patch"]
    assert g["flashlight_p"] == pytest.approx(1 / (geo.PERMUTATIONS + 1))
    assert at_chance(g) and g["adaptivity"] > 0.1


def test_a_shift_invariant_operator_with_a_masked_half_is_not_adaptive_and_at_chance(tmp_path):
    """Input pixels of the left half have no effect (all-zero columns): they say nothing about the mean column,
    and their adaptive parts are zero, so the shift-invariant right half gives adaptivity 0 and every figure of
    the flashlight, control included, sits exactly at chance."""
    store = upscaler_store(tmp_path / "half.zarr",
                           lambda y0, y, x, s: gaussian(y0.shape, y, x, s) * (x >= 10))
    g = geo.measure_store(store, samples=144)
    n = g["flashlight_candidates"]
    assert g["adaptivity"] < 1e-5 and g["zero_columns"] > 0
    assert g["flashlight_noise_columns"] == n
    assert g["flashlight_top1"] == pytest.approx(1 / n, abs=1e-12) == g["flashlight_chance"]
    assert g["flashlight_control_top1"] == pytest.approx(1 / n, abs=1e-12)  # every permutation ties: chance


def test_columns_unrelated_to_the_image_score_at_chance(tmp_path):
    rng = np.random.default_rng(5)
    store = upscaler_store(tmp_path / "random.zarr", lambda y0, y, x, s: gaussian(y0.shape, y, x, s)
                           * (1 + 0.5 * rng.standard_normal(y0.shape)))
    g = geo.measure_store(store, samples=144)
    assert g["adaptivity"] > 0.2  # adaptive, but not to the image
    chance, se = g["flashlight_chance"], np.sqrt(g["flashlight_chance"] * (1 - g["flashlight_chance"]) / 144)
    assert abs(g["flashlight_top1"] - chance) <= 3 * se
    assert abs(g["flashlight_mrr"] - g["flashlight_mrr_chance"]) <= 3 * g["flashlight_mrr_se"]
    assert g["flashlight_p"] > 0.01 and at_chance(g)


def test_an_edge_aware_upscaler_is_found(tmp_path):
    """Joint-bilateral upsampling (Gaussian × similarity to the pixel's own value) follows the geometry."""
    def bilateral(y0, y, x, s):
        own = y0[s * y:s * y + s, s * x:s * x + s].mean()
        return gaussian(y0.shape, y, x, s) * np.exp(-(y0 - own) ** 2 / (2 * 0.1 ** 2))

    g = geo.measure_store(upscaler_store(tmp_path / "bilateral.zarr", bilateral), samples=144)
    assert g["flashlight_top1"] >= 20 * g["flashlight_chance"] and g["flashlight_p"] < 0.01
    assert g["flashlight_descriptors"] == ["segment", "segment"] and at_chance(g)


# ---- image-to-image: identity, instance-normalised identity, global mean, flat / edge ------------------

class InstanceNormIdentity(nn.Module):
    """x -> InstanceNorm(x): the normalisation-only map (its statistics are frozen by the interpreter)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.InstanceNorm2d(3)

    def forward(self, x):
        return self.norm(x)


class GlobalMean(nn.Module):
    """Every output pixel is its channel's mean over the image: F = 11ᵀ / N per channel."""

    def forward(self, x):
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)


def test_identity_map_has_diagonal_share_one_and_reach_zero(tmp_path):
    c, h = 3, 16
    F = np.eye(c * h * h, dtype=np.float32).reshape(c, h, h, c, h, h)
    y0 = np.random.default_rng(0).random((c, h, h))
    g = geo.measure_store(dense_store(tmp_path / "identity.zarr", F, y0), samples=50)
    assert g["diagonal_share"] == 1.0 and g["reach90"] == 0.0 and g["global_share"] == 0.0
    assert g["adaptivity"] == 0.0 and g["flashlight_top1"] == pytest.approx(g["flashlight_chance"])


def test_a_store_of_rows_gives_the_figures_of_a_store_of_columns(tmp_path):
    """F stored as rows (one chunk per output pixel: classifier-style layout) is read once, row block by block."""
    rng = np.random.default_rng(4)
    F = rng.random((1, 12, 12, 1, 12, 12)) * (rng.random((1, 12, 12, 1, 12, 12)) < 0.2)
    y0 = rng.random((1, 12, 12))
    by_rows = geo.measure_store(dense_store(tmp_path / "rows.zarr", F, y0, mode="rows"), samples=20, radius=2)
    assert_same_figures(geo.measure_store(dense_store(tmp_path / "cols.zarr", F, y0), samples=20, radius=2), by_rows)


def test_instance_normalised_identity_is_diagonal_and_store_equals_interpreter(tmp_path):
    x0 = np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)
    store = module_store(tmp_path / "in.zarr", InstanceNormIdentity, x0, "instance-norm-identity")
    g = geo.measure_store(store, samples=40)
    assert g["diagonal_share"] == pytest.approx(1.0) and g["reach90"] == 0.0 and g["global_share"] == 0.0
    li = interpret(InstanceNormIdentity().eval(), torch.from_numpy(x0))
    direct = geo.measure_interpreter(li, li.x0, li.output, samples=40)
    assert_same_figures(g, direct)


def test_global_mean_map(tmp_path):
    h, w, radius, far = 20, 18, 2, 5
    x0 = np.random.default_rng(2).random((1, 3, h, w)).astype(np.float32)
    store = module_store(tmp_path / "mean.zarr", GlobalMean, x0, "global-mean")
    g = geo.measure_store(store, samples=10_000, radius=radius, global_radius=far)
    ys, xs = np.mgrid[radius:h - radius, radius:w - radius]
    assert g["samples"] == ys.size  # all interior pixels
    reach, share = [], []
    for y, x in zip(ys.ravel(), xs.ravel()):
        d = np.sort(chebyshev((h, w), y, x, 1).ravel())  # each pixel holds 1/N of the mass
        reach.append(d[int(np.ceil(0.9 * d.size)) - 1])
        share.append((d > far).mean())
    assert g["diagonal_share"] == pytest.approx(1 / (h * w), rel=1e-5)
    assert g["reach90"] == pytest.approx(np.mean(reach)) and g["global_share"] == pytest.approx(np.mean(share))
    assert g["global_radius"] == far and g["adaptivity"] == pytest.approx(0, abs=1e-6)


def test_flat_edge_ratio_of_a_label_like_map(tmp_path):
    """Columns of flat pixels carry 5 % of the mass of the others: the ratio is 0.05 whatever the sample."""
    c, h = 3, 24
    y0 = np.zeros((c, h, h), dtype=np.float32)
    y0[0, 6:12, 4:20], y0[2, 14:20, 8:16] = 1.0, 0.5  # two segments on a background
    flat, edge = geo.flat_edge_classes(y0, 1)
    weight = np.where(flat, 0.05, 1.0)
    F = np.zeros((c, h, h, c, h, h), dtype=np.float32)
    for y in range(h):
        for x in range(h):
            F[:, y, x, :, y, x] = weight[y, x] * np.eye(c)
    g = geo.measure_store(dense_store(tmp_path / "label.zarr", F, y0), samples=30, radius=2)
    assert g["flat_edge_ratio"] == pytest.approx(0.05)
    assert g["flat_samples"] >= geo.CLASS_MIN and g["edge_samples"] >= geo.CLASS_MIN  # topped up


# ---- store and interpreter agree ------------------------------------------------------------------------

def assert_same_figures(a, b):
    assert set(a) == set(b)
    for key in a:
        if key == "seconds":
            continue
        if isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        else:
            assert a[key] == b[key], key


def test_store_and_interpreter_give_the_same_figures(tmp_path):
    x0 = images.to_input(images.crop(images.default_image()[1], (20, 20, 24, 24)), spec("pixelshuffle-x4")).numpy()
    store = registry_store(tmp_path / "ps.zarr", "pixelshuffle-x4", x0, tile=8)
    from_store = geo.measure_store(store, samples=60, seed=3)
    li = interpret(build("pixelshuffle-x4", "random"), torch.from_numpy(x0))
    assert_same_figures(from_store, geo.measure_interpreter(li, samples=60, seed=3))
    assert from_store["adaptivity"] > 0.05  # ReLU masks make its columns adapt


# ---- the command and the site ---------------------------------------------------------------------------

def run(*args):
    return CliRunner().invoke(main, ["geometry", *map(str, args), "--quiet"])


def test_command_writes_the_attribute_and_prints_json_and_a_table(bicubic, tmp_path):
    path = bicubic.path
    result = run(path, "--json", "--samples", "64", "--seed", "2")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(result.output)
    for key in ("store", "model", "adaptivity", "flashlight_top1", "flashlight_mrr", "flashlight_chance",
                "diagonal_share", "reach90", "global_share", "global_radius", "flat_edge_ratio", "samples"):
        assert key in entry, key
    assert entry["model"] == "bicubic-x4" and entry["store"] == str(path) and entry["samples"] == 64
    written = open_store(path).attrs["geometry"]
    assert written == {k: v for k, v in entry.items() if k not in ("store", "model", "compute_seconds")}
    assert entry["compute_seconds"] == open_store(path).attrs["timings"]["last_run_seconds"]
    table = run(path, "--samples", "64", "--no-write")
    assert table.exit_code == 0 and "bicubic-x4" in table.output and "% of compute" in table.output
    assert re.search(r"0\.000\s+0\.016 \(0\.016\)", table.output), table.output


def test_bad_stores_give_one_line_errors(tmp_path):
    shards, chunks, tasks = layout((1, 16, 16), (10, 1, 1), 4, "rows")
    vector = create_store(tmp_path / "classifier.zarr", identity={"model": "c"}, attrs={"model": "c"},
                          x0=np.zeros((1, 16, 16)), y0=np.zeros(10), residual=np.zeros(10), shards=shards,
                          chunks=chunks, tasks=tasks)
    vector.update_attrs(complete=True)
    identity = np.eye(16 * 16, dtype=np.float32).reshape(1, 16, 16, 1, 16, 16)
    small = dense_store(tmp_path / "small.zarr", identity, np.zeros((1, 16, 16)))
    unfinished = dense_store(tmp_path / "unfinished.zarr", identity, np.zeros((1, 16, 16)))
    unfinished.update_attrs(complete=False)
    cases = [((vector.path,), "classifier"), ((tmp_path / "nothing",), "not a linterp store"),
             ((unfinished.path,), "incomplete"), ((small.path, "--radius", "8"), "too small")]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert open_store(small.path).attrs.geometry is None
    # several stores, one of them too small: the others are measured and printed, the error names its store
    big = dense_store(tmp_path / "big.zarr", np.eye(32 * 32, dtype=np.float32).reshape(1, 32, 32, 1, 32, 32),
                      np.zeros((1, 32, 32)))
    result = run(small.path, big.path, "--radius", "8", "--samples", "16", "--json")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith(f"Error: {small.path}: ") and "too small" in lines[-1]
    (entry,) = json.loads("\n".join(lines[:-1]))
    assert entry["store"] == str(big.path) and open_store(big.path).attrs.geometry["diagonal_share"] == 1.0


def test_the_figures_reach_the_site_manifest(tmp_path):
    from pipeline.export.site import export_site

    c, h = 1, 12
    F = np.eye(c * h * h, dtype=np.float32).reshape(c, h, h, c, h, h)
    store = dense_store(tmp_path / "identity.zarr", F, np.random.default_rng(0).random((c, h, h)))
    assert run(store.path, "--samples", "20", "--radius", "2").exit_code == 0
    export_site([store.path], tmp_path / "site", progress=False, allow_unverified=True)
    text = (tmp_path / "site" / "data" / "manifest.js").read_text()
    manifest = json.loads(text[text.index("(") + 1:text.rindex(")")])
    assert manifest["models"][0]["geometry"] == open_store(store.path).attrs["geometry"]


def test_an_input_too_small_for_the_radius_is_named_width_by_height_with_a_fix_that_works():
    """Sizes as --crop gives them (W×H: a 40-wide, 7-tall input is 40×7); the largest radius that fits, or none
    when no radius can (a 1-pixel-tall input: "lower the radius" could not help)."""
    with pytest.raises(geo.GeometryError, match=re.escape(
            "a 40×7 input is too small for windows of radius 4 (needs at least 10×10; --radius 2 or less)")):
        geo.interior((7, 40), 4)
    with pytest.raises(geo.GeometryError, match=re.escape(
            "a 40×1 input is too small for windows of radius 0 (needs at least 2×2; geometry needs an input of at "
            "least 2×2 pixels)")):
        geo.interior((1, 40), 0)
    assert len(geo.interior((7, 40), 2)) == 3 * 36
