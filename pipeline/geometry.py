"""Geometry of F(x0): how the columns (projective filters) adapt to the image, measured on a sample of columns.

The figures (docs/geometry.md explains each, with its controls):

- ``adaptivity``: mean over sampled pixels p of ‖c_p − c̄‖ / ‖c_p‖, where c_p is the column block of p (all
  input channels) cut out of a window of ``radius`` input pixels around p's own position, and c̄ the mean
  of those windows. A shift-invariant upscaler (bicubic) gives 0.
- the *flashlight*: can the location of a pixel be recovered from its column alone? The adaptive part
  a_p = Σ_channels (c_p − c̄) of each sampled column is matched against local structure of y0 at every sampled
  location q (N candidates): the output patch, its gradient magnitude and its segment map (which pixels have
  the value of q's own pixel). ``flashlight_top1`` / ``flashlight_mrr``: how often the true location scores
  best / the mean reciprocal rank of the true location, against ``flashlight_chance`` = 1/N and
  ``flashlight_mrr_chance`` = H_N/N; ``flashlight_control_*``: the same columns with their locations
  shuffled (must be at chance); ``flashlight_p``: the permutation p-value of the MRR.
- mass indicators from the L1 mass of each full column by distance d = Chebyshev distance, in input pixels,
  from p (an output pixel (u, v) lies at input pixel (u // s, v // s) for scale s): ``diagonal_share`` (mass
  at d = 0, i.e. at p's own s×s output block, all channels), ``reach90`` (smallest d holding 90 % of the
  mass), ``global_share`` (mass at d > ``global_radius``) and ``flat_edge_ratio`` (mean column mass at pixels
  in flat areas of y0 over that at pixels on edges of y0).

Columns come from a store (``measure_store``) or straight from an interpreter (``measure_interpreter``); both
sample the same pixels for the same seed and return the same dict. Everything else here is a pure function
of numpy arrays.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import numpy as np

from .shard_io import READ_THREADS, read_box

#: Version of the definitions below, stored with the figures.
METHOD = "linterp-geometry/1"
#: Default number of sampled pixels (columns of every input channel each).
SAMPLES = 256
#: Default window radius, in input pixels, for adaptivity and the flashlight (a (2R+1)·s square of output).
RADIUS = 4
#: Default radius (input pixels) beyond which a column's mass counts as global.
GLOBAL_RADIUS = 8
#: Share of the mass that ``reach90`` must hold.
REACH = 0.9
#: Flat pixel: output gradient magnitude below this fraction of y0's value range everywhere within one input
#: pixel of it. Edge pixel: gradient magnitude at its own output block at least ``EDGE_GRADIENT`` of the range.
FLAT_GRADIENT = 0.02
EDGE_GRADIENT = 0.10
#: The flat / edge classes are topped up with extra columns to at least this many pixels each (when the image
#: has them).
CLASS_MIN = 32
#: Label permutations of the shuffled control.
PERMUTATIONS = 200
#: An adaptive part below this fraction of its column's norm is float rounding, not adaptation: it is set to
#: zero for the flashlight (its matches all tie).
NOISE = 1e-4
#: Most bytes of F read from a store at once.
READ_BYTES = 256 * 2**20
#: Names of the flashlight's descriptors of local image structure, in order.
DESCRIPTORS = ("patch", "gradient", "segment")


class GeometryError(ValueError):
    """The figures cannot be measured on this store or network (one-line message)."""


# ---- pixels ---------------------------------------------------------------------------------------------

def image_scale(in_shape, out_shape) -> int:
    """The integer spatial scale s = H_out / H_in = W_out / W_in of shapes (C, H, W); else ``GeometryError``."""
    (_, h, w), (_, ho, wo) = in_shape, out_shape
    if ho == 1 and wo == 1 and (h, w) != (1, 1):
        raise GeometryError("the output is a vector (a classifier): geometry measures image outputs")
    if ho % h or wo % w or ho // h != wo // w:
        raise GeometryError(f"output {wo}×{ho} is not an integer multiple of the input {w}×{h}")
    return ho // h


def interior(hw: tuple[int, int], radius: int) -> np.ndarray:
    """(m, 2) int array of the input pixels (y, x) whose window of ``radius`` lies inside an H×W input."""
    h, w = hw
    if h < 2 * radius + 2 or w < 2 * radius + 2:  # W×H, as --crop and the other commands give sizes
        fits = (min(h, w) - 2) // 2  # the largest radius that leaves 2×2 interior pixels
        fix = f"--radius {fits} or less" if fits >= 0 else "geometry needs an input of at least 2×2 pixels"
        raise GeometryError(f"a {w}×{h} input is too small for windows of radius {radius} "
                            f"(needs at least {2 * radius + 2}×{2 * radius + 2}; {fix})")
    ys, xs = np.mgrid[radius:h - radius, radius:w - radius]
    return np.stack([ys.ravel(), xs.ravel()], 1)


def gradient_magnitude(y0: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W): √Σ_c (∂y y0_c)² + (∂x y0_c)² (central differences) over the value range of y0."""
    y0 = np.asarray(y0, dtype=np.float64)
    span = float(y0.max() - y0.min())
    if span == 0:
        return np.zeros(y0.shape[1:])
    gy, gx = np.gradient(y0, axis=(1, 2))
    return np.sqrt((gy ** 2 + gx ** 2).sum(0)) / span


def flat_edge_classes(y0: np.ndarray, scale: int, *, flat: float = FLAT_GRADIENT,
                      edge: float = EDGE_GRADIENT) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (H_in, W_in) maps of flat and edge pixels, from y0 (C, H_in·s, W_in·s) alone.

    g = ``gradient_magnitude(y0)``; a pixel's own value is the largest g over its s×s output block. Edge: that
    value ≥ ``edge``. Flat: the largest g within one input pixel (its 3×3 blocks) < ``flat``.
    """
    g = gradient_magnitude(y0)
    h, w = g.shape[0] // scale, g.shape[1] // scale
    own = g[:h * scale, :w * scale].reshape(h, scale, w, scale).max((1, 3))
    padded = np.pad(own, 1, mode="edge")
    near = np.max([padded[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=0)
    return near < flat, own >= edge


def sample_pixels(in_hw: tuple[int, int], radius: int, samples: int, seed: int) -> np.ndarray:
    """(n, 2) interior pixels drawn uniformly without replacement (all of them when there are fewer), in
    raster order. The same (shape, radius, samples, seed) gives the same pixels."""
    candidates = interior(in_hw, radius)
    if samples < 2:
        raise GeometryError(f"samples must be at least 2, not {samples}")
    if samples >= len(candidates):
        return candidates
    pick = np.random.default_rng(seed).choice(len(candidates), samples, replace=False)
    return candidates[np.sort(pick)]


def class_pixels(classes: tuple[np.ndarray, np.ndarray], sampled: np.ndarray, radius: int, seed: int,
                 minimum: int = CLASS_MIN) -> np.ndarray:
    """Extra interior pixels (k, 2) that bring each class (flat, edge) to ``minimum`` members, when it has
    them; drawn uniformly from the class members not already ``sampled``."""
    rng = np.random.default_rng([seed, 1])
    taken = {tuple(p) for p in sampled}
    extra = []
    h, w = classes[0].shape
    inner = interior((h, w), radius)
    for mask in classes:
        members = [tuple(p) for p in inner if mask[p[0], p[1]]]
        have = sum(p in taken for p in members)
        free = [p for p in members if p not in taken]
        need = min(max(0, minimum - have), len(free))
        for i in rng.choice(len(free), need, replace=False) if need else ():
            extra.append(free[i])
            taken.add(free[i])
    return np.array(sorted(extra), dtype=int).reshape(-1, 2)


# ---- one column -----------------------------------------------------------------------------------------

def window(image: np.ndarray, y: int, x: int, scale: int, radius: int) -> np.ndarray:
    """The (2·radius + 1)·s square of ``image`` (..., H_out, W_out) around input pixel (y, x) (inside)."""
    lo_y, lo_x, side = scale * (y - radius), scale * (x - radius), scale * (2 * radius + 1)
    return image[..., lo_y:lo_y + side, lo_x:lo_x + side]


def mass_profile(mass: np.ndarray, y: int, x: int, scale: int, rings: int) -> np.ndarray:
    """A column's L1 mass by Chebyshev distance from input pixel (y, x), in input pixels.

    ``mass`` (H_out, W_out): Σ |F[c_out, u, v, c_in, y, x]| over both channel axes. Returns float64 (rings,):
    entry d = the mass of the output pixels (u, v) with max(|u // s − y|, |v // s − x|) = d.
    """
    dy = np.abs(np.arange(mass.shape[0]) // scale - y)
    dx = np.abs(np.arange(mass.shape[1]) // scale - x)
    return np.bincount(np.maximum.outer(dy, dx).ravel(), mass.ravel().astype(np.float64), minlength=rings)[:rings]


# ---- the figures ----------------------------------------------------------------------------------------

def mean_column(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(c̄, live): the mean of the columns (n, D) that are not all zero, and which those are (n,) bool. An input
    pixel without any effect (a masked region) is no evidence of what a non-adaptive column looks like."""
    live = np.abs(flat).sum(1) > 0
    return (flat[live].mean(0) if live.any() else np.zeros(flat.shape[1])), live


def adaptivity(windows: np.ndarray) -> tuple[float, float]:
    """(mean, standard error) over pixels of ‖c_p − c̄‖ / ‖c_p‖; ``windows`` (n, ...) column windows, c̄ their
    mean (``mean_column``). All-zero columns are left out (NaN when all are zero)."""
    flat = windows.reshape(len(windows), -1).astype(np.float64)
    centre, live = mean_column(flat)
    ratios = np.linalg.norm(flat[live] - centre, axis=1) / np.linalg.norm(flat[live], axis=1)
    return _mean_se(ratios)


def descriptors(y0: np.ndarray, pixels: np.ndarray, scale: int, radius: int) -> dict[str, np.ndarray]:
    """Local structure of y0 (C, H_out, W_out) in the window around each pixel: name -> (n, C, w, w), w =
    (2·radius + 1)·s. ``patch``: y0 itself; ``gradient``: its gradient magnitude (per channel); ``segment``:
    −|y0 − v_p|, v_p the mean of y0 over p's own output block (high where the output has p's value)."""
    y0 = np.asarray(y0, dtype=np.float64)
    gy, gx = np.gradient(y0, axis=(1, 2))
    grad = np.sqrt(gy ** 2 + gx ** 2)
    out = {name: [] for name in DESCRIPTORS}
    for y, x in pixels:
        patch = window(y0, y, x, scale, radius)
        own = window(y0, y, x, scale, 0).mean(axis=(1, 2), keepdims=True)
        out["patch"].append(patch)
        out["gradient"].append(window(grad, y, x, scale, radius))
        out["segment"].append(-np.abs(patch - own))
    return {name: np.stack(v) for name, v in out.items()}


def _unit_rows(m: np.ndarray) -> np.ndarray:
    m = m.reshape(len(m), -1)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


def similarity(adaptive: np.ndarray, descs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """name -> (n, n) |cosine| between adaptive part i and descriptor j minus the descriptors' mean over the
    candidates (the descriptor's own "adaptive part")."""
    a = _unit_rows(adaptive).astype(np.float32)
    return {name: np.abs(a @ _unit_rows(d - d.mean(0)).astype(np.float32).T).astype(np.float64)
            for name, d in descs.items()}


def rank_credit(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row i of ``scores`` (n, N), the top-1 credit and reciprocal rank of candidate ``truth[i]``, ties
    broken at random in expectation: with h candidates strictly above it and t tied with it (itself included),
    credit = 1/t if h = 0 else 0, and reciprocal rank = mean of 1/r for r = h+1 … h+t."""
    mine = scores[np.arange(len(scores)), truth][:, None]
    higher = (scores > mine).sum(1)
    ties = (scores == mine).sum(1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, scores.shape[1] + 1))])
    return np.where(higher == 0, 1.0 / ties, 0.0), (harmonic[higher + ties] - harmonic[higher]) / ties


def cross_validated(credit: np.ndarray, rr: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Score each query with a descriptor chosen without looking at it.

    ``credit``, ``rr``: (K descriptors, n queries) from ``rank_credit``; ``folds``: (n,) of 0 / 1. The queries
    of each fold are scored with the descriptor of highest MRR over the *other* fold's queries (the first on
    ties). Returns (credit (n,), reciprocal rank (n,), [descriptor index chosen for fold 0, for fold 1]).
    """
    out_credit, out_rr, chosen = np.empty(credit.shape[1]), np.empty(credit.shape[1]), []
    for fold in (0, 1):
        mine = folds == fold
        k = int(np.argmax(rr[:, ~mine].mean(1)))
        out_credit[mine], out_rr[mine] = credit[k, mine], rr[k, mine]
        chosen.append(k)
    return out_credit, out_rr, chosen


def flashlight(windows: np.ndarray, descs: dict[str, np.ndarray], *, seed: int = 0,
               permutations: int = PERMUTATIONS) -> dict:
    """Recover each sampled pixel's location among the n sampled locations from its column alone.

    ``windows`` (n, C_out, w, w, C_in): column windows; ``descs``: name -> (n, C_out, w, w) from
    ``descriptors``. For each descriptor, the score of candidate q for column p is the |cosine| between
    a_p = Σ_channels (c_p − c̄) (zero when below ``NOISE``·‖c_p‖: rounding) and q's descriptor minus its mean
    over the candidates. The queries are split in two random folds and each fold is scored with the
    descriptor that ranks best (MRR) on the other fold (``cross_validated``), so the choice adds no bias.

    Returns top-1 / MRR (with standard errors over the queries), chance levels, the descriptors chosen, the
    shuffled control (the whole procedure with the locations permuted: mean and standard error over
    ``permutations``), the permutation p-value of the MRR, and each descriptor's in-sample figures (not
    cross-validated).
    """
    n = len(windows)
    flat = windows.reshape(n, -1).astype(np.float64)
    centre, live = mean_column(flat)
    adaptive = (flat - centre).reshape(windows.shape).sum(-1)
    noise = ~live | (np.linalg.norm(adaptive.reshape(n, -1), axis=1) <= NOISE * np.linalg.norm(flat, axis=1))
    adaptive[noise] = 0.0
    names = list(descs)
    scores = similarity(adaptive, descs)
    rng = np.random.default_rng([seed, 2])
    folds = rng.permutation(n) % 2

    def evaluate(truth):
        credit, rr = (np.array(a) for a in zip(*(rank_credit(scores[k], truth) for k in names)))
        return cross_validated(credit, rr, folds), credit, rr

    (credit, rr, chosen), per_credit, per_rr = evaluate(np.arange(n))
    control = np.array([[a.mean() for a in evaluate(rng.permutation(n))[0][:2]] for _ in range(permutations)])
    top1, top1_se = _mean_se(credit)
    mrr, mrr_se = _mean_se(rr)
    return {"flashlight_top1": top1, "flashlight_top1_se": top1_se, "flashlight_mrr": mrr,
            "flashlight_mrr_se": mrr_se, "flashlight_candidates": n, "flashlight_chance": 1.0 / n,
            "flashlight_mrr_chance": float(np.mean(1.0 / np.arange(1, n + 1))),
            "flashlight_descriptors": [names[k] for k in chosen],
            "flashlight_control_top1": float(control[:, 0].mean()),
            "flashlight_control_top1_se": float(control[:, 0].std(ddof=1) / np.sqrt(permutations)),
            "flashlight_control_mrr": float(control[:, 1].mean()),
            "flashlight_control_mrr_se": float(control[:, 1].std(ddof=1) / np.sqrt(permutations)),
            "flashlight_p": float((1 + np.sum(control[:, 1] >= mrr)) / (1 + permutations)),
            "flashlight_noise_columns": int(noise.sum()),
            "flashlight_by_descriptor": {name: {"top1": float(per_credit[i].mean()), "mrr": float(per_rr[i].mean())}
                                         for i, name in enumerate(names)}}


def mass_indicators(profiles: np.ndarray, *, global_radius: int = GLOBAL_RADIUS, reach: float = REACH) -> dict:
    """From mass profiles (n, rings) (see ``mass_profile``): means and standard errors over the columns with
    mass of ``diagonal_share`` (share at distance 0), ``reach90`` (smallest distance holding ``reach`` of the
    mass) and ``global_share`` (share beyond ``global_radius``); ``zero_columns`` counts columns without mass."""
    total = profiles.sum(1)
    live = profiles[total > 0] / total[total > 0, None]
    cumulative = np.cumsum(live, axis=1)
    # (1 − 1e-9): a share of exactly ``reach`` counts despite rounding in the sums
    reach_d = np.array([np.searchsorted(row, reach * row[-1] * (1 - 1e-9)) for row in cumulative], dtype=float)
    out = {"global_radius": int(global_radius), "zero_columns": int((total <= 0).sum())}
    for key, values in (("diagonal_share", live[:, 0] if len(live) else live),
                        ("reach90", reach_d), ("global_share", live[:, global_radius + 1:].sum(1))):
        out[key], out[key + "_se"] = _mean_se(values)
    return out


def flat_edge_ratio(masses: np.ndarray, flat: np.ndarray, edge: np.ndarray) -> dict:
    """Mean column mass of flat pixels over that of edge pixels (boolean masks over the ``masses``), with the
    counts; the ratio is None when a class is empty or edge columns have no mass."""
    ratio = None
    if flat.any() and edge.any() and masses[edge].mean() > 0:
        ratio = float(masses[flat].mean() / masses[edge].mean())
    return {"flat_edge_ratio": ratio, "flat_samples": int(flat.sum()), "edge_samples": int(edge.sum()),
            "flat_threshold": FLAT_GRADIENT, "edge_threshold": EDGE_GRADIENT}


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else float("nan")
    return float(values.mean()), se


# ---- putting it together --------------------------------------------------------------------------------

#: A column source: given pixels (k, 2), yields (indices into them, full columns (C_out, H_out, W_out, C_in, m)).
ColumnSource = Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]


def measure(columns: ColumnSource, in_shape, y0: np.ndarray, *, samples: int = SAMPLES, seed: int = 0,
            radius: int = RADIUS, global_radius: int = GLOBAL_RADIUS, progress: bool = False,
            desc: str = "geometry") -> dict:
    """Every figure, from the columns of sampled pixels given by ``columns``; ``in_shape`` (C, H, W), ``y0``
    (C_out, H_out, W_out). ``progress``: report the columns read (pipeline/progress.py). Returns a JSON-ready
    dict (see the module docstring; docs/geometry.md)."""
    from .progress import progress as bar
    started = time.perf_counter()
    y0 = np.asarray(y0, dtype=np.float32)
    _, h, w = in_shape
    scale = image_scale(in_shape, y0.shape)
    if global_radius < 0:
        raise GeometryError(f"global radius must be ≥ 0, not {global_radius}")
    pixels = sample_pixels((h, w), radius, samples, seed)
    classes = flat_edge_classes(y0, scale)
    extra = class_pixels(classes, pixels, radius, seed)
    todo = np.concatenate([pixels, extra])
    n, rings = len(pixels), max(h, w)
    windows, profiles = [None] * n, np.zeros((len(todo), rings))
    with bar(len(todo), desc, unit="pixels", enabled=progress) as shown:
        for idx, block in columns(todo):
            masses = np.abs(block).sum(axis=(0, 3))  # (H_out, W_out, m)
            for k, i in enumerate(idx):
                y, x = todo[i]
                profiles[i] = mass_profile(masses[..., k], y, x, scale, rings)
                if i < n:
                    # a copy: a view would keep the whole block read for it alive (5.3 MB a pixel at 384×384)
                    windows[i] = window(np.moveaxis(block[..., k], 3, 0), y, x, scale, radius).copy()
            shown.update(len(idx))
    windows = np.moveaxis(np.stack(windows), 1, -1)  # (n, C_out, w, w, C_in)
    figures = {"method": METHOD, "samples": n, "seed": int(seed), "radius": int(radius), "scale": scale}
    figures["adaptivity"], figures["adaptivity_se"] = adaptivity(windows)
    figures.update(flashlight(windows, descriptors(y0, pixels, scale, radius), seed=seed))
    figures.update(mass_indicators(profiles[:n], global_radius=global_radius))
    figures.update(flat_edge_ratio(profiles.sum(1), classes[0][todo[:, 0], todo[:, 1]],
                                   classes[1][todo[:, 0], todo[:, 1]]))
    figures["seconds"] = time.perf_counter() - started
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in figures.items()}


def store_columns(store, *, read_bytes: int = READ_BYTES) -> ColumnSource:
    """Columns from a store's F, read one of F's inner chunks of the input side at a time: the sampled pixels
    of a chunk come from one read of their bounding box, over the output region of the shards stored for that
    input tile (F is zero elsewhere), so every stored chunk it touches is decompressed once. A box whose dense
    block would exceed ``read_bytes`` is read pixel by pixel. Stores of rows (chunks that hold whole rows of F)
    are read once, a block of output rows at a time."""
    F = store.F
    c_out, h_out, w_out, c_in, h, w = F.shape
    cy, cx = F.chunks[4], F.chunks[5]
    sy, sx = (F.shards or F.chunks)[4:]
    reach: dict[tuple[int, int], tuple[int, int, int, int]] = {}  # input shard -> output box of its shards
    for region in store.stored_shards():
        key = (region[4].start, region[5].start)
        top, bottom, left, right = reach.get(key, (h_out, 0, w_out, 0))
        reach[key] = (min(top, region[1].start), max(bottom, region[1].stop), min(left, region[2].start),
                      max(right, region[2].stop))

    def read_rows(pixels):
        columns = np.zeros((c_out, h_out, w_out, c_in, len(pixels)), dtype=np.float32)
        for c in range(0, c_out, F.chunks[0]):
            for r in range(0, h_out, F.chunks[1]):
                rows = read_box(F, (slice(c, c + F.chunks[0]), slice(r, r + F.chunks[1])) + (slice(None),) * 4,
                                READ_THREADS)
                columns[c:c + F.chunks[0], r:r + F.chunks[1]] = rows[..., pixels[:, 0], pixels[:, 1]]
        yield np.arange(len(pixels)), columns

    def read_pixels(top, bottom, left, right, ys, xs):
        columns = np.zeros((c_out, h_out, w_out, c_in, len(ys)), dtype=np.float32)
        if bottom > top and right > left:  # else no shard of this tile is stored: its columns are zero
            y_lo, x_lo, y_hi, x_hi = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
            block = read_box(F, (slice(None), slice(top, bottom), slice(left, right), slice(None), slice(y_lo, y_hi),
                                 slice(x_lo, x_hi)), READ_THREADS)
            columns[:, top:bottom, left:right] = block[..., ys - y_lo, xs - x_lo]
        return columns

    def read(pixels):
        if cy >= h and cx >= w:
            yield from read_rows(pixels)
            return
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (y, x) in enumerate(pixels):
            groups.setdefault((y // cy, x // cx), []).append(i)
        for idx in groups.values():
            idx = np.array(idx)
            ys, xs = pixels[idx, 0], pixels[idx, 1]
            box = reach.get((ys[0] // sy * sy, xs[0] // sx * sx), (0, 0, 0, 0))
            box_size = (box[1] - box[0]) * (box[3] - box[2]) * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
            if 4 * c_out * c_in * box_size <= read_bytes:
                yield idx, read_pixels(*box, ys, xs)
            else:
                for k, i in enumerate(idx):
                    yield np.array([i]), read_pixels(*box, ys[k:k + 1], xs[k:k + 1])

    return read


def interpreter_columns(li, *, batch: int | None = None) -> ColumnSource:
    """Columns computed by the interpreter: for each pixel its C_in one-hot inputs go through the frozen
    network cropped to a window around it (``compute.tile_columns``), the whole image when it has no finite
    receptive radius."""
    from .compute import DEFAULT_BATCH, out_shape3, tile_columns

    in_shape = tuple(li.x0.shape[1:])
    c_out, h_out, w_out = out_shape3(li)

    def read(pixels):
        for i, (y, x) in enumerate(pixels):
            (top, left, rh, rw), block = tile_columns(li, in_shape, (int(y), int(x), 1, 1),
                                                      batch=batch or DEFAULT_BATCH)
            column = np.zeros((c_out, h_out, w_out, in_shape[0], 1), dtype=np.float32)
            column[:, top:top + rh, left:left + rw] = block[..., 0, :]
            yield np.array([i]), column

    return read


def measure_store(store, *, samples: int = SAMPLES, seed: int = 0, radius: int = RADIUS,
                  global_radius: int = GLOBAL_RADIUS, progress: bool = False) -> dict:
    """``measure`` on an opened store (``pipeline.store.Store``): columns read from its F."""
    return measure(store_columns(store), store.in_shape, store.y0, samples=samples, seed=seed, radius=radius,
                   global_radius=global_radius, progress=progress, desc=f"geometry {store.path.name}")


def measure_interpreter(li, x0=None, y0=None, *, samples: int = SAMPLES, seed: int = 0, radius: int = RADIUS,
                        global_radius: int = GLOBAL_RADIUS, batch: int | None = None,
                        progress: bool = False) -> dict:
    """``measure`` on a ``LinearInterpreter`` without a store: columns computed by forward passes.

    ``x0`` / ``y0`` (optional, (1, C, H, W) or (C, H, W), tensors or arrays) must be the interpreter's input and
    output (``li.x0``, ``li.output``, the defaults): they are checked, not used to rebuild anything. The same
    (samples, seed, radius) as ``measure_store`` on the store of this interpreter gives the same figures.
    """
    from .compute import out_shape3

    in_shape, out_shape = tuple(li.x0.shape[1:]), out_shape3(li)
    found = np.asarray(li.output.detach().cpu().float()).reshape(out_shape)
    for name, given, shape, ref in (("x0", x0, in_shape, li.x0), ("y0", y0, out_shape, li.output)):
        if given is None:
            continue
        given = np.asarray(given.detach().cpu() if hasattr(given, "detach") else given, dtype=np.float32)
        if given.size != np.prod(shape) or not np.allclose(
                given.reshape(shape), np.asarray(ref.detach().cpu().float()).reshape(shape), atol=1e-5, rtol=1e-4):
            raise GeometryError(f"{name} is not the interpreter's {'input' if name == 'x0' else 'output'}")
    return measure(interpreter_columns(li, batch=batch), in_shape, found, samples=samples, seed=seed,
                   radius=radius, global_radius=global_radius, progress=progress)
