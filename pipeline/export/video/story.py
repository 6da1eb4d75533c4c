"""The story of a video: which view each frame shows, and the subtitles that explain it, from the stores.

Timeline (shares of the frames): the models' outputs (10 %), a walk of columns (40 %), the same walk over rows
(25 %), then the top eigen-pairs of each model (25 %: eigen-input v_k, then eigen-output u_k, for k = 1..3);
without an SVD in any store the walks take that time. The walk is planned on the input image
(:mod:`pipeline.export.video.walk`) and sampled at a steady pace.

Subtitles are plain English sentences written from the stores: which models and which pixels are shown, what a
column / row / eigen-image is, and the figures measured for them: the residual's share of each output (over the
image, and at the output pixels the rows walk visits), the geometry figures of ``linterp geometry`` when a
store holds them (flashlight test, adaptivity, and for image-to-image stores diagonal share, reach, global
share, flat / edge ratio), the image figures of the walk (edge strength, flatness, texture), and the singular
values. One cue per stretch of the walk and per eigen-pair; stretches shorter than :data:`MIN_CUE` seconds are
joined with their neighbours of the same part. Cues follow the parts: a cue never spans two parts unless one of
them lasts less than :data:`MIN_PART_CUE` (so a video of a few seconds still has a cue per part). A cue says what
is on screen during its time: a move of the walk between two stretches is said as a move ("Then the cursor moves
on to a flat area."), in its own cue when it lasts :data:`MIN_CUE`, else at the end of the cue of the stretch it
leaves, so the next stretch's cue starts when the cursor gets there. Every stretch, move and eigen-pair of a cue
is said in it (:func:`fit`): the reading speed drops the other sentences, and shortens the stretches' own
sentences into one ("Along the strongest edge, then on to a texture."), never drops them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.export.video import walk
from pipeline.export.video.frames import View, model_names
from pipeline.export.video.subtitles import Cue
from pipeline.store import Store

#: shortest cue within a part, seconds (shorter stretches are joined with their neighbours in the part)
MIN_CUE = 1.5
#: shortest cue of a whole part, seconds: a part this long has cues of its own, a shorter one shares its neighbour's
MIN_PART_CUE = 0.6
#: eigen-pairs shown per model
EIGEN_PAIRS = 3
#: where a stretch of the walk is, in a few words: its lead starts with them, and a cue too short for the leads
#: says them instead (:func:`route`)
GIST = {"edge": "along the strongest edge", "flat": "across a flat area", "texture": "around a texture"}
#: where a stretch of the walk is, for sentences said during it
HERE = {"edge": "along this edge", "flat": "across this flat area", "texture": "around this texture"}
#: where a move of the walk goes, for the sentence said during it
AHEAD = {"edge": "an edge", "flat": "a flat area", "texture": "a texture"}
#: reading speed the subtitles are cut to, characters per second (a cue keeps its most important sentences)
READING_CPS = 25
#: the priority of a lead, the sentence of what is on screen (0: the figures, more important; 2, 3: less)
LEAD = 1


@dataclass(frozen=True)
class Said:
    """What one stretch of the story says (the outputs, a stretch or a move of the walk, an eigen-pair):
    ``sentences``, (priority, sentence) pairs in the order said, 0 the most important, one of them of priority
    :data:`LEAD`; ``gist``, that lead in a few words, lower case; ``passing``: a move, whose gist is left out of a
    cue that shows the stretches before and after it (:func:`route`)."""

    sentences: tuple[tuple[int, str], ...]
    gist: str
    passing: bool = False


@dataclass(frozen=True)
class Story:
    """``views`` (one per frame) with their title-bar ``headings``, and the ``cues`` (seconds)."""

    views: list[View]
    headings: list[str]
    cues: list[Cue]
    fps: float

    @property
    def duration(self) -> float:
        return len(self.views) / self.fps


# ---- figures ---------------------------------------------------------------------------------------------------
def residual_share(y0: np.ndarray, residual: np.ndarray, pixels: np.ndarray | None = None) -> float:
    """Σ|r| / (Σ|F·x0| + Σ|r|) over the output (C, H, W), or over the output pixels ``pixels`` (n, 2) (y, x)
    only, all channels; F·x0 = y0 − r. 0: the output is all F·x0; 1: all residual."""
    fx = y0 - residual
    if pixels is not None:
        ys, xs = np.unique(np.asarray(pixels), axis=0).T
        fx, residual = fx[:, ys, xs], residual[:, ys, xs]
    r = float(np.abs(residual).sum())
    total = float(np.abs(fx).sum()) + r
    return r / total if total > 0 else 0.0


def _pct(v: float) -> str:
    p = 100 * v
    return f"{p:.0f}\u00a0%" if p >= 10 or p == 0 else f"{p:.1f}\u00a0%" if p >= 0.1 else f"{p:.2g}\u00a0%"


def _num(v: float) -> str:
    return f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"


def by_model(names: list[str], values: list, fmt=_num) -> str | None:
    """"name value, name value, …" over the models that have a value; None when none has."""
    parts = [f"{n} {fmt(v)}" for n, v in zip(names, values) if v is not None]
    return ", ".join(parts) if parts else None


def panel_titles(stores: list[Store], names: list[str]) -> list[str]:
    """The models' full names, over their panels and in the first cue: each of ``names`` with the store's model
    name when it does not hold it already ("EDSR (edsr-small-x4)", but "PixelShuffle pixelshuffle-x4" as it is)."""
    return [n if m in n else f"{n} ({m})" for n, m in zip(names, model_names(stores))]


def _geometry(stores: list[Store]) -> list[dict]:
    """The ``geometry`` attribute of each store (written by ``linterp geometry``), or {}."""
    return [dict(s.attrs.get("geometry") or {}) for s in stores]


def geometry_sentences(names: list[str], geometry: list[dict]) -> dict[str, list[str]]:
    """Sentences of the geometry figures, grouped by the stretch of the walk where they are said:
    {"edge": [...], "texture": [...], "flat": [...]} (only figures some store holds)."""
    def col(key):
        return [g.get(key) for g in geometry]

    said: dict[str, list[str]] = {"edge": [], "texture": [], "flat": []}
    top1 = by_model(names, col("flashlight_top1"), _pct)
    if top1:
        chances = sorted({round(c, 6) for c in col("flashlight_chance") if c is not None})
        chance = f" (chance {_pct(chances[0])})" if len(chances) == 1 else \
            (f" (chance: {by_model(names, col('flashlight_chance'), _pct)})" if chances else "")
        said["edge"].append(f"Flashlight test, the pixel's location guessed from its column alone, right for: "
                            f"{top1}{chance}.")
    adapt = by_model(names, col("adaptivity"))
    if adapt:
        said["texture"].append(f"How much columns change from pixel to pixel (adaptivity, 0 = one filter "
                               f"everywhere): {adapt}.")
    diag = by_model(names, col("diagonal_share"), _pct)
    if diag:
        said["edge"].append(f"Share of a column's mass on its own pixel: {diag}.")
    reach = by_model(names, col("reach90"), lambda v: f"{v:.3g}")
    if reach:
        said["texture"].append(f"Radius holding 90\u00a0% of a column's mass, in input pixels: {reach}.")
    far = by_model(names, col("global_share"), _pct)
    if far:
        radii = sorted({r for r in col("global_radius") if r is not None})
        where = f"farther than {radii[0]:g} input pixels" if len(radii) == 1 else "far from its pixel"
        said["texture"].append(f"Mass of a column {where}: {far}.")
    flat = by_model(names, col("flat_edge_ratio"), _pct)
    if flat:
        said["flat"].append(f"Columns in flat areas carry {flat} of the mass of columns on edges.")
    return said


def where(seg: walk.Segment, plan_shape: tuple[int, int], grid: tuple[int, int], domain: str) -> str:
    """Which pixels a stretch of the walk visits, on ``grid`` (the ``domain``'s pixels), in words."""
    phrase = GIST[seg.kind].capitalize()
    if seg.kind == "texture":
        (cy, cx), = walk.to_pixels(seg.points.mean(0)[None], plan_shape, grid)
        return f"{phrase} at {domain} pixel ({cy}, {cx})."
    (ay, ax), (by, bx) = walk.to_pixels(seg.points[[0, -1]], plan_shape, grid)
    return f"{phrase}, {domain} pixels ({ay}, {ax}) to ({by}, {bx})."


def image_figures(seg: walk.Segment) -> str:
    """The walk planner's figures of a stretch, in words."""
    f = seg.figures
    if seg.kind == "edge":
        return f"Edge gradient {f['gradient_ratio']:.1f}× the image mean."
    if seg.kind == "flat":
        return f"Local spread {_pct(f['local_std'])} of the image's range."
    return f"Texture gradient {f['gradient_ratio']:.1f}× the mean, orientation coherence {f['coherence']:.2f}."


# ---- timeline ------------------------------------------------------------------------------------------------
def _split(total: int, shares: list[float]) -> list[int]:
    """Largest-remainder split of ``total`` frames by ``shares`` (each part ≥ 1 frame when total allows)."""
    raw = np.array(shares) / sum(shares) * total
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts))[:total - counts.sum()]:
        counts[i] += 1
    while total >= len(shares) and (counts == 0).any():
        counts[counts.argmax()] -= 1
        counts[int(np.flatnonzero(counts == 0)[0])] += 1
    return counts.tolist()


def _runs(owner: np.ndarray) -> list[tuple[int, int, int]]:
    """(start, end, segment index) runs of frames that show one segment of the walk (moves included)."""
    runs, start = [], 0
    for i in range(1, len(owner) + 1):
        if i == len(owner) or owner[i] != owner[start]:
            runs.append((start, i, int(owner[start])))
            start = i
    return runs


def _join(a: list, b: list) -> list:
    """Pieces [start, end, [Said, …]] ``a`` and the next one ``b`` as one (the stretches of both, in order)."""
    return [a[0], b[1], a[2] + b[2]]


def _gather(pieces: list[list], min_frames: int) -> list[list]:
    """Pieces [start, end, [Said, …]] (consecutive) gathered into pieces of at least ``min_frames``: a piece
    shorter than that takes the pieces after it until it is long enough; a short last piece joins the one before.
    Longer pieces are left as they are."""
    out: list[list] = []
    for p in pieces:
        if out and out[-1][1] - out[-1][0] < min_frames:
            out[-1] = _join(out[-1], p)
        else:
            out.append(list(p))
    if len(out) > 1 and out[-1][1] - out[-1][0] < min_frames:
        last = out.pop()
        out[-1] = _join(out[-1], last)
    return out


def route(said: list[Said]) -> str:
    """The gists of ``said`` as one sentence, "Along the strongest edge, then around a texture." (the gist of a
    move between two stretches of the cue is left out: "then" says it)."""
    text = ", then ".join(s.gist for i, s in enumerate(said) if not (s.passing and 0 < i < len(said) - 1))
    return text[:1].upper() + text[1:] + "."


def fit(said: list[Said], seconds: float, cps: float = READING_CPS) -> str:
    """The text of a cue that shows the stretches ``said``: every stretch's lead, then the other sentences most
    important (lowest priority) first until the next would make the text unreadable at ``cps`` characters per
    second over ``seconds``. The most important of them is always kept when it ranks above the leads, and the
    leads give way to their gists in one sentence (:func:`route`) when in full they would not leave it room: no
    stretch goes unsaid. The kept sentences keep their order (the route first)."""
    text = {(i, j): t for i, s in enumerate(said) for j, (_, t) in enumerate(s.sentences)}
    rank = sorted((p, i, j) for i, s in enumerate(said) for j, (p, _) in enumerate(s.sentences))
    leads = {(i, j) for p, i, j in rank if p == LEAD}
    others = [(i, j) for p, i, j in rank if p != LEAD]
    keep = {(i, j) for p, i, j in rank[:1] if p < LEAD}

    def length(keys) -> int:
        return sum(len(text[k]) + 1 for k in keys)

    short = length(leads | keep) > cps * seconds
    used = (len(route(said)) + 1 if short else length(leads)) + length(keep)
    for key in others:
        if key in keep:
            continue
        if used + length([key]) > cps * seconds:
            break
        keep.add(key)
        used += length([key])
    if short:
        return " ".join([route(said)] + [text[k] for k in sorted(keep)])
    return " ".join(text[k] for k in sorted(keep | leads))


def _outputs(stores: list[Store], names: list[str], notes: tuple[str, ...], n: int):
    """The first part, ``n`` frames of the models' outputs: (views, headings, pieces); its lead names the models
    in full (:func:`panel_titles`), their figures by ``names``."""
    h_in, w_in = stores[0].in_shape[1:]
    titles = panel_titles(stores, names)
    shares = by_model(names, [residual_share(s.y0, s.residual) for s in stores], _pct)
    said = [(LEAD, f"{len(stores)} model{'s' * (len(stores) > 1)} on one {h_in}×{w_in} input: "
                   f"{', '.join(titles)}."),
            (0, f"Residual r's share of the output: {shares}."),
            (3, "At this input each network is exactly y = F·x + r.")] + [(2, note) for note in notes]
    listing = " and ".join([", ".join(titles[:-1]), titles[-1]] if len(titles) > 1 else titles)
    return ([View("outputs")] * n, ["f(x0): what each model makes of the input on the left"] * n,
            [[0, n, [Said(tuple(said), f"the outputs of {listing}")]]])


def _move(segments: list[walk.Segment], index: int) -> Said:
    """What is said during the move ``segments[index]``: where it goes."""
    ahead = [s.kind for s in segments[index + 1:] if s.kind != "move"]
    to = f"on to {AHEAD[ahead[0]]}" if ahead else "on"
    return Said(((LEAD, f"Then the cursor moves {to}."),), to, passing=True)


def _walk(part: str, stores: list[Store], names: list[str], segments: list[walk.Segment], n: int,
          min_frames: int):
    """``n`` frames of the walk over the columns (``part`` "columns") or rows ("rows"): (views, headings,
    pieces), one piece per stretch of the walk; a move shorter than ``min_frames`` is said at the end of the
    piece of the stretch it leaves (the first piece of a part that starts on a move: at its start)."""
    plan_shape = stores[0].in_shape[1:]
    finest = max((s.out_shape[1:] for s in stores), key=lambda hw: hw[0] * hw[1])
    grid, domain = (plan_shape, "input") if part == "columns" else (finest, "output")
    pos, owner = walk.pace(segments, n)
    views = [View(part, (float(p[0]), float(p[1]))) for p in pos]
    headings = [f"Columns of F: what input pixel ({y}, {x}) adds to each output" if part == "columns"
                else f"Rows of F: which input pixels make output pixel ({y}, {x})"
                for y, x in walk.to_pixels(pos, plan_shape, grid)]
    geometry = geometry_sentences(names, _geometry(stores))
    pieces: list[list] = []
    pending = None  # a short move that the part starts on: said with the stretch after it
    for a, b, seg_index in _runs(owner):
        seg = segments[seg_index]
        if seg.kind == "move":
            move = [a, b, [_move(segments, seg_index)]]
            if b - a >= min_frames:
                pieces.append(move)
            elif pieces:
                pieces[-1] = _join(pieces[-1], move)
            else:
                pending = move
            continue
        said = [(LEAD, where(seg, plan_shape, grid, domain)), (3, image_figures(seg))]
        first = all(segments[j].kind == "move" for j in owner[:a])  # the part's first stretch
        if part == "columns":
            if first:
                said.insert(0, (2, "Columns of F: what the input pixel under the cursor adds to the output "
                                   "(red +, blue −, each at ± its largest value)."))
            said += [(0, sentence) for sentence in geometry.get(seg.kind, [])]
        else:
            if first:
                said.insert(0, (2, "Rows of F: which input pixels make the output pixel under the cursor."))
            there = by_model(names, [residual_share(s.y0, s.residual, walk.to_pixels(
                pos[a:b], plan_shape, s.out_shape[1:])) for s in stores], _pct)
            said.append((0, f"Residual's share {HERE[seg.kind]}: {there}."))
        told = [a, b, [Said(tuple(said), GIST[seg.kind])]]
        pieces.append(_join(pending, told) if pending else told)
        pending = None
    return views, headings, pieces + ([pending] if pending else [])


def _eigen(names: list[str], spectra: list[np.ndarray], pairs: int, n: int):
    """``n`` frames of the top ``pairs`` eigen-pairs (v_k, then u_k): (views, headings, pieces), one piece per
    pair; ``spectra``: each store's singular values."""
    views, headings, pieces = [], [], []
    for k, m in enumerate(_split(n, [1.0] * pairs)):
        first = len(views)
        for i in range(m):
            inputs = i < (m + 1) // 2
            views.append(View("eigen-inputs" if inputs else "eigen-outputs", None, k))
            headings.append(f"SVD of F: eigen-input v{k + 1}" + (", the input F amplifies most" if k == 0 else "")
                            if inputs else f"SVD of F: eigen-output u{k + 1} = F v{k + 1} / σ{k + 1}")
        sigma = by_model(names, [float(S[k]) if len(S) > k else None for S in spectra])
        said = [(LEAD, f"Eigen-pair {k + 1}: the eigen-input v{k + 1}, then the eigen-output u{k + 1} "
                    f"= F v{k + 1} / σ{k + 1}."), (0, f"σ{k + 1}: {sigma}.")]
        if k == 0:
            said.append((2, "The SVD F = Σ σ u vᵀ sorts inputs by how much F amplifies them."))
        pieces.append([first, len(views), [Said(tuple(said), f"eigen-pair {k + 1}")]])
    return views, headings, pieces


def tell(stores: list[Store], *, duration: float, fps: float, names: list[str] | None = None,
         notes: tuple[str, ...] = ()) -> Story:
    """The story of ``stores`` (one image) in ``duration`` seconds at ``fps``; ``names`` are the models' names
    on screen and in the subtitles (default: the stores' model names); ``notes`` are said in the first cue."""
    names = names or model_names(stores)
    total = max(1, int(round(duration * fps)))
    spectra = [s.svd()[0] if s.has_svd else np.zeros(0) for s in stores]  # singular values (k,) per store
    pairs = min(EIGEN_PAIRS, max(len(S) for S in spectra))
    counts = _split(total, [0.10, 0.40, 0.25] + ([0.25] if pairs else []))
    segments = walk.plan(stores[0].x0)
    min_cue = max(1, int(round(MIN_CUE * fps)))
    parts = [_outputs(stores, names, notes, counts[0]),
             _walk("columns", stores, names, segments, counts[1], min_cue),
             _walk("rows", stores, names, segments, counts[2], min_cue)]
    if pairs:
        parts.append(_eigen(names, spectra, pairs, counts[3]))
    views, headings, pieces = [], [], []
    for part_views, part_headings, part_pieces in parts:
        # stretches are gathered within their part, so that cues follow the parts
        part_pieces = _gather([p for p in part_pieces if p[1] > p[0]], min_cue)
        pieces += [[a + len(views), b + len(views), said] for a, b, said in part_pieces]
        views += part_views
        headings += part_headings
    pieces = _gather(pieces, max(1, int(round(MIN_PART_CUE * fps))))  # a part too short for a cue of its own
    cues = [Cue(a / fps, b / fps, fit(said, (b - a) / fps)) for a, b, said in pieces]
    return Story(views, headings, cues, fps)
