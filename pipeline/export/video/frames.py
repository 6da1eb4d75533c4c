"""The frame renderer: several stores of one image side by side, with a shared cursor, on the site's colour scale.

A frame (H × W × 3 uint8, both even) is, top to bottom: a title bar; the panels (the input x0 in natural
colours with the cursor, then one panel per store), in one row or, when one row would be wider than
:data:`MAX_WIDTH` (many stores), in several, each panel under its title (wrapped onto more lines when it is wider
than the slot) and over the legend of the site's signed colour scale (:func:`pipeline.export.render.diverging_lut`,
each plane at ± its own largest |value|, as the site's per-filter normalisation); and an empty band at the bottom
where players draw the subtitles, so that they never cover a panel. Each panel sits at the left of a slot at least
:data:`LEGEND_WIDTH` wide, so that the legend under a narrow panel (a tall thin crop, a small zoom) has room for
its labels instead of running into its neighbour; legend text that would still not fit is abbreviated, then cut
at the slot's edge. The cursor's position is also marked by ticks in the margins above and left of every store's
panel (never on the panel, whose pixels are exactly the colour-mapped plane).

What a panel shows (:class:`View`): ``outputs`` f(x0) in natural colours; ``columns`` the column of the input
pixel under the cursor (over the output domain); ``rows`` the row of the output pixel under the cursor (over the
input domain); ``eigen-inputs`` / ``eigen-outputs`` v_k / u_k. Filters and eigen-images are shown for the white
impulse summed over colours: Σ over the source channels, then Σ over the target channels (the site's Σ → Σ).
Planes are resized to the panel by pixel replication (nearest neighbour), so one data pixel is a block of
``zoom`` × ``zoom`` screen pixels; panels start on even coordinates so 4:2:0 chroma never mixes two data pixels
when ``zoom`` is even.
"""
from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pipeline.export import render
from pipeline.export.site import read_source_chunk
from pipeline.export.video.walk import to_pixels
from pipeline.store import Store

MARGIN, TITLE, LABEL, LEGEND, SUBTITLE_BAND = 16, 36, 28, 44, 80
CURSOR = (255, 176, 0)
TEXT, MUTED, BACKGROUND = (235, 235, 235), (160, 160, 160), (18, 18, 18)
#: the default zoom keeps frames within MAX_WIDTH × MAX_HEIGHT (720p: the largest frame of H.264 level 3.1),
#: wrapping the panels into rows when one row would be wider; a frame is at least MIN_WIDTH wide (the panels of a
#: narrow image, e.g. a 1×20 crop, leave room on the right), so that its heading and subtitles fit
MAX_WIDTH, MAX_HEIGHT, MIN_WIDTH = 1280, 720, 560
#: the narrowest slot of a panel, screen pixels: room under the panel for its legend ("-8.88e-05  0  +8.88e-05",
#: "no SVD in this store") when the panel itself is narrower; the legend's text size, px; the gap between labels
LEGEND_WIDTH, LEGEND_SIZE, LEGEND_GAP = 160, 12, 6
#: a panel's title: text size, px; line height, px; the most lines it takes in its slot (a longer title ends in
#: "…"; the first subtitle cue names every panel in full)
TITLE_SIZE, TITLE_LINE, TITLE_LINES = 15, 18, 3


@dataclass(frozen=True)
class View:
    """What one frame shows: ``part`` ("outputs", "columns", "rows", "eigen-inputs" or "eigen-outputs"), the
    cursor ``position`` (y, x) in input pixels (continuous; None: no cursor) and the eigen index ``k`` (0-based)
    for the eigen parts."""

    part: str
    position: tuple[float, float] | None = None
    k: int = 0


def sigma_plane(planes: np.ndarray) -> np.ndarray:
    """(C, h, w) -> (h, w): the sum over channels (the site's Σ), or the only channel."""
    return planes.sum(axis=0)


class PlaneReader:
    """Σ → Σ columns and rows of one store, read one source chunk of F at a time (the walk stays in a chunk for
    several frames; the last ``cached`` chunks are kept)."""

    def __init__(self, store: Store, cached: int = 12):
        self.store = store
        self.regions = store.stored_shards()
        self.cache: OrderedDict = OrderedDict()
        self.cached = cached

    def _chunk(self, kind: str, y: int, x: int):
        F = self.store.F
        src = (4, 5) if kind == "col" else (1, 2)
        ch_y, ch_x = F.chunks[src[0]], F.chunks[src[1]]
        cy, cx = y // ch_y * ch_y, x // ch_x * ch_x
        key = (kind, cy, cx)
        if key not in self.cache:
            h, w = min(ch_y, F.shape[src[0]] - cy), min(ch_x, F.shape[src[1]] - cx)
            block, offset = read_source_chunk(F, kind, cy, cx, h, w, self.regions)
            # Σ over the source channels, then over the target channels: the site's Σ → Σ plane
            self.cache[key] = (block.sum(axis=0).sum(axis=2), offset, (cy, cx))
            while len(self.cache) > self.cached:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key]

    def filter(self, kind: str, y: int, x: int) -> np.ndarray:
        """The Σ → Σ ``kind`` ("col" or "row") of source pixel (y, x): (H_dst, W_dst) float32."""
        planes, (oy, ox), (cy, cx) = self._chunk(kind, y, x)
        dst = self.store.out_shape if kind == "col" else self.store.in_shape
        out = np.zeros(dst[1:], np.float32)
        p = planes[y - cy, x - cx]
        out[oy:oy + p.shape[0], ox:ox + p.shape[1]] = p
        return out


#: ASCII stand-ins for the symbols the text uses, when no font with them is installed
ASCII = str.maketrans({"σ": "s", "Σ": "S", "ᵀ": "T", "−": "-", "→": "->", "×": "x", "±": "+/-", "…": "..."})


@functools.lru_cache(maxsize=8)
def _font(size: int):
    """(font, has Greek and math symbols): DejaVu Sans when installed, else Pillow's built-in font."""
    from PIL import ImageFont

    try:
        return ImageFont.truetype("DejaVuSans.ttf", size), True
    except OSError:
        return ImageFont.load_default(size=size), False


@functools.lru_cache(maxsize=1024)
def _glyph(char: str, size: int) -> np.ndarray:
    """The anti-aliased coverage (h, advance) uint8 of one character at ``size`` px, in a cell of the font's
    full line height (so glyphs line up when put side by side)."""
    from PIL import Image, ImageDraw

    font, _ = _font(size)
    ascent, descent = font.getmetrics()
    width = max(1, int(round(font.getlength(char))))
    img = Image.new("L", (width, ascent + descent), 0)
    ImageDraw.Draw(img).text((0, 0), char, font=font, fill=255)
    return np.asarray(img)


@functools.lru_cache(maxsize=4096)
def text_mask(text: str, size: int) -> np.ndarray:
    """The coverage (h, w) uint8 of ``text``: its characters' glyphs side by side (no kerning)."""
    if not _font(size)[1]:
        text = text.translate(ASCII)
    return np.concatenate([_glyph(ch, size) for ch in text or " "], axis=1)


def prefix_widths(text: str, size: int) -> np.ndarray:
    """The widths (screen pixels) of ``text[:k]`` for k = 0 … len(text) as :func:`text_mask` draws them (the sum of
    their glyphs' advances), all at once: (len(text) + 1,) int, non-decreasing (``text[:0]``: 0)."""
    if not _font(size)[1]:
        advances = [sum(_glyph(c, size).shape[1] for c in ch.translate(ASCII)) for ch in text]
    else:
        advances = [_glyph(ch, size).shape[1] for ch in text]
    return np.concatenate([[0], np.cumsum(advances, dtype=np.int64)])


def draw_text(frame: np.ndarray, text: str, y: int, x: int, colour=TEXT, size: int = 15,
              anchor: str = "left", max_width: int | None = None) -> None:
    """Draw ``text`` with its top at row ``y``; ``anchor`` left / centre / right of column ``x``; text wider than
    ``max_width`` is cut on the right."""
    mask = text_mask(text, size)
    if max_width is not None:
        mask = mask[:, :max_width]
    h, w = mask.shape
    x0 = x if anchor == "left" else x - w // 2 if anchor == "centre" else x - w
    y0 = y
    ys, xs = slice(max(0, y0), min(frame.shape[0], y0 + h)), slice(max(0, x0), min(frame.shape[1], x0 + w))
    m = mask[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0, None].astype(np.float32) / 255
    region = frame[ys, xs].astype(np.float32)
    frame[ys, xs] = np.rint(region * (1 - m) + np.array(colour, np.float32) * m).astype(np.uint8)


def _natural_rgb(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W, 3) uint8 through the site's natural-colour mapping (C not in {1, 3}: the mean)."""
    q, _, _ = render.natural(image if image.shape[0] in (1, 3) else image.mean(0, keepdims=True))
    return q if q.ndim == 3 else np.repeat(q[..., None], 3, axis=-1)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def model_names(stores: list[Store]) -> list[str]:
    """The stores' model names (the ``model`` attribute, else the folder name)."""
    return [str(s.attrs.get("model") or s.path.stem) for s in stores]


@functools.lru_cache(maxsize=1024)
def wrap_title(text: str, width: int, size: int = TITLE_SIZE, lines: int = TITLE_LINES) -> tuple[str, ...]:
    """``text`` in at most ``lines`` lines of at most ``width`` screen pixels at ``size`` px, each line broken at
    its last space ("VanGogh" / "(cyclegan-style_vangogh)"), else after its last "-", "_" or "/", else where it
    must, unless breaking at whichever comes last takes fewer lines; a text that needs more lines ends its last
    line in "…"."""
    def wide(t: str) -> int:
        return text_mask(t, size).shape[1]

    def breaks(rest: str, n: int, chars: str) -> list[int]:
        """Where a line may end within ``rest[:n]``: before a space (when ``chars`` holds one), after one of the
        other ``chars``."""
        return [k for k in range(1, n + 1) if (" " in chars and rest[k] == " ") or rest[k - 1] in chars.strip()]

    flat = " ".join(text.split())
    widths = prefix_widths(flat, size)  # of flat[:i]; the line flat[start:i] is widths[i] - widths[start] wide
    ends = np.maximum.accumulate([0] + [k + 1 if ch != " " else 0 for k, ch in enumerate(flat)])  # flat[:i].rstrip()

    def longest(start: int) -> int:
        """The most characters from ``flat[start]`` (not a space) whose line, trailing spaces dropped, is at most
        ``width`` wide; at least 1. (Widths of lines grow with their length: the fitting ones come first.)"""
        return max(1, int(np.count_nonzero(widths[ends[start + 1:]] - widths[start] <= width)))

    def wrap(classes: tuple[str, ...]) -> list[str]:
        """Lines ended at the last break of the first of ``classes`` that has one (else where they must)."""
        out, start = [], 0
        while start < len(flat):
            rest, n = flat[start:], longest(start)
            cut = n if n == len(rest) else next((max(ks) for ks in (breaks(rest, n, c) for c in classes) if ks), n)
            out.append(rest[:cut].rstrip())
            start += cut + len(rest[cut:]) - len(rest[cut:].lstrip())
        return out or [""]

    out = min(wrap((" ", "-_/")), wrap((" -_/",)), key=len)
    if len(out) > lines:
        last = out[lines - 1]
        while last and wide(last.rstrip() + "…") > width:
            last = last[:-1]
        out = out[:lines - 1] + [last.rstrip() + "…"]
    return tuple(out)


@dataclass(frozen=True)
class Layout:
    """Where things are in a frame: ``panels[i]`` = (top, left) of panel i (0: the input, then one per store),
    ``columns`` to a row, rows top to bottom; each ``panel`` = (height, width) screen pixels at ``zoom`` screen
    pixels per data pixel; ``slot`` = the width (even, ≥ the panel's and :data:`LEGEND_WIDTH`) of the column a
    panel, its title and its legend hold, at the panel's left; ``titles[i]``: panel i's title in lines that fit
    the slot; ``label``: the height of the band of titles above each row of panels; ``size`` = (H, W) of the
    frame, both even. Made by :meth:`of`."""

    zoom: int
    columns: int
    panel: tuple[int, int]
    slot: int
    titles: tuple[tuple[str, ...], ...]
    label: int
    panels: tuple[tuple[int, int], ...]
    size: tuple[int, int]

    @property
    def rows(self) -> int:
        return -(-len(self.panels) // self.columns)

    @property
    def fits(self) -> bool:
        """Whether the frame is within MAX_WIDTH × MAX_HEIGHT."""
        return self.size[1] <= MAX_WIDTH and self.size[0] <= MAX_HEIGHT

    @classmethod
    def of(cls, stores: list[Store], zoom: int | None = None, titles: list[str] | None = None) -> "Layout":
        """The layout of ``stores``' panels (the input's, then one per store, titled ``titles``, default the
        models' names): the largest zoom (``zoom`` when given) whose frame fits MAX_WIDTH × MAX_HEIGHT, in the
        fewest rows, then the narrowest frame; when none fits, the rows of the frame that overshoots that box
        least (the smallest max(W / MAX_WIDTH, H / MAX_HEIGHT): the least a player must shrink it to show it
        whole) at the smallest zoom tried (1, or ``zoom``)."""
        shape = (max(s.out_shape[1] for s in stores), max(s.out_shape[2] for s in stores))
        labels = ("input x0", *(model_names(stores) if titles is None else titles))
        n = len(labels)

        def zooms(columns: int) -> list[int]:
            return [zoom] if zoom else _zooms(shape, columns, -(-n // columns))

        fitting = [next((a for a in (arrange(shape, labels, z, c) for z in zooms(c)) if a.fits), None)
                   for c in range(1, n + 1)]
        best = max((a for a in fitting if a), key=lambda a: (a.zoom, -a.rows, -a.size[1]), default=None)
        if best is not None:
            return best
        return min((arrange(shape, labels, zooms(c)[-1], c) for c in range(1, n + 1)),
                   key=lambda a: (max(a.size[1] / MAX_WIDTH, a.size[0] / MAX_HEIGHT), a.rows, a.size[1]))


def arrange(shape: tuple[int, int], labels: tuple[str, ...], zoom: int, columns: int) -> Layout:
    """The :class:`Layout` of panels titled ``labels`` (the input's first) for data of ``shape`` (h, w) pixels at
    ``zoom``, ``columns`` panels to a row: each row is a band of titles (as many lines as the longest title takes in
    the slot), the panels, their legends; below the last row, the subtitle band."""
    ph, pw = shape[0] * zoom, shape[1] * zoom
    slot = max(pw, LEGEND_WIDTH) + max(pw, LEGEND_WIDTH) % 2
    titles = tuple(wrap_title(t, slot) for t in labels)
    label = LABEL + (max(map(len, titles)) - 1) * TITLE_LINE
    step, row = slot + MARGIN + MARGIN % 2, label + ph + LEGEND
    panels = tuple((TITLE + r * row + label, MARGIN + c * step)
                   for r, c in (divmod(i, columns) for i in range(len(labels))))
    height = TITLE + -(-len(labels) // columns) * row + SUBTITLE_BAND
    width = max(MARGIN + columns * step, MIN_WIDTH)
    return Layout(zoom, columns, (ph, pw), slot, titles, label, panels, (height + height % 2, width + width % 2))


def _zooms(shape: tuple[int, int], columns: int, rows: int) -> list[int]:
    """The default zooms worth trying for panels of ``shape`` (h, w) data pixels, ``columns`` to a row in ``rows``
    rows, largest first: at most what the frame's width and height leave each panel; even above 2, so that 4:2:0
    chroma never mixes two data pixels."""
    wide = (MAX_WIDTH - MARGIN) // columns - MARGIN
    high = (MAX_HEIGHT - TITLE - SUBTITLE_BAND) // rows - LABEL - LEGEND
    top = max(1, min(wide // shape[1], high // shape[0]))
    return [z for z in range(top, 0, -1) if z <= 2 or z % 2 == 0]


class Renderer:
    """Render :class:`View` s of several stores of one image (the first store's x0 is the input panel) laid out
    by ``layout`` (which holds the panels' titles)."""

    def __init__(self, stores: list[Store], layout: Layout):
        self.stores, self.layout = stores, layout
        self.readers = [PlaneReader(s) for s in stores]
        self.lut = render.diverging_lut()
        self.plan_shape = stores[0].in_shape[1:]
        self.input_rgb = self._resize(_natural_rgb(stores[0].x0))
        self.svd = [s.svd() if s.has_svd else None for s in stores]
        self._last = None  # (key, frame) of the last frame rendered
        bar = self.lut[np.linspace(1, 255, layout.slot).round().astype(int)]
        self.bar = np.repeat(bar[None], 8, axis=0)

    def _resize(self, image: np.ndarray) -> np.ndarray:
        """(h, w, ...) -> the panel size by pixel replication (nearest neighbour)."""
        ph, pw = self.layout.panel
        h, w = image.shape[:2]
        if ph % h == 0 and pw % w == 0:
            return np.repeat(np.repeat(image, ph // h, axis=0), pw // w, axis=1)
        return image[np.arange(ph) * h // ph][:, np.arange(pw) * w // pw]

    @functools.lru_cache(maxsize=8)
    def _background(self, part: str) -> np.ndarray:
        frame = np.empty(self.layout.size + (3,), np.uint8)
        frame[...] = BACKGROUND
        lay = self.layout
        for (top, left), lines in zip(lay.panels, lay.titles):
            for k, line in enumerate(lines):
                draw_text(frame, line, top - lay.label + 2 + k * TITLE_LINE, left, TEXT, TITLE_SIZE,
                          max_width=lay.slot)
        return frame

    def pixel(self, i: int, view: View) -> tuple[int, int] | None:
        """The source pixel (y, x) of store ``i`` under the cursor: an input pixel for columns, an output pixel
        for rows; None for the other parts."""
        if view.part not in ("columns", "rows"):
            return None
        store = self.stores[i]
        grid = store.in_shape[1:] if view.part == "columns" else store.out_shape[1:]
        y, x = to_pixels(np.array([view.position]), self.plan_shape, grid)[0]
        return int(y), int(x)

    def plane(self, i: int, view: View, pixel: tuple[int, int] | None) -> tuple[np.ndarray, str] | None:
        """What store ``i``'s panel shows at ``pixel`` (see :meth:`pixel`): (values (h, w) float32, what) for
        signed planes, or None when the store has nothing to show for this view (no SVD, or fewer pairs)."""
        if view.part == "columns":
            return self.readers[i].filter("col", *pixel), f"column of {pixel}"
        if view.part == "rows":
            return self.readers[i].filter("row", *pixel), f"row of {pixel}"
        svd = self.svd[i]
        if svd is None or view.k >= svd[0].shape[0]:
            return None
        S, U, V = svd
        vec = V[view.k] if view.part == "eigen-inputs" else U[view.k]
        name = "v" if view.part == "eigen-inputs" else "u"
        return sigma_plane(vec), f"{name}{view.k + 1}, σ{view.k + 1} = {_fmt(float(S[view.k]))}"

    def render(self, view: View, heading: str = "") -> np.ndarray:
        """One frame (H, W, 3) uint8 of ``view``; ``heading`` is the title bar's text. Consecutive views that
        show the same pixels give the same (read-only) array, rendered once: the walk lingers on each pixel
        for a few frames at a steady pace."""
        lay = self.layout
        ph, pw = lay.panel
        box = None
        if view.position is not None:
            grid = self.plan_shape if view.part == "columns" else max(
                (s.out_shape[1:] for s in self.stores), key=lambda hw: hw[0] * hw[1])
            y, x = to_pixels(np.array([view.position]), self.plan_shape, grid)[0]
            box = (y * ph // grid[0], x * pw // grid[1], (y + 1) * ph // grid[0], (x + 1) * pw // grid[1])
        pixels = [self.pixel(i, view) for i in range(len(self.stores))]
        key = (view.part, view.k, heading, box, tuple(pixels))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        frame = self._background(view.part).copy()
        draw_text(frame, heading, 10, MARGIN, TEXT, 17, max_width=lay.size[1] - 2 * MARGIN)
        top, left = lay.panels[0]
        frame[top:top + ph, left:left + pw] = self.input_rgb
        if box is not None:
            self._cursor(frame, top, left, box)
        for i, pixel in enumerate(pixels):
            top, left = lay.panels[i + 1]
            legend = top + ph + 4
            if view.part == "outputs":
                frame[top:top + ph, left:left + pw] = self._resize(_natural_rgb(self.stores[i].y0))
                draw_text(frame, "f(x0), natural colours", legend + 12, left, MUTED, 13, max_width=lay.slot)
                continue
            shown = self.plane(i, view, pixel)
            if shown is None:
                draw_text(frame, "no SVD in this store", top + ph // 2 - 8, left + lay.slot // 2, MUTED, 14,
                          "centre", max_width=lay.slot)
                continue
            values, what = shown
            scale = float(np.abs(values).max()) if values.size else 0.0
            frame[top:top + ph, left:left + pw] = self._resize(render.colourise(values, scale, self.lut))
            self._legend(frame, legend, left, scale, what)
            if box is not None:
                self._ticks(frame, top, left, box)
        frame.flags.writeable = False
        self._last = (key, frame)
        return frame

    def _legend(self, frame: np.ndarray, y: int, left: int, scale: float, what: str) -> None:
        """The colour bar with its scale "-s  0  +s" (abbreviated to "±s" when the three labels do not fit the
        slot) and ``what`` the panel shows, from row ``y`` across the slot at column ``left``; no text leaves
        the slot."""
        width = self.layout.slot
        frame[y:y + 8, left:left + width] = self.bar
        labels = [f"-{_fmt(scale)}", "0", f"+{_fmt(scale)}"]
        if sum(text_mask(t, LEGEND_SIZE).shape[1] for t in labels) + 2 * LEGEND_GAP <= width:
            for label, x, anchor in zip(labels, (left, left + width // 2, left + width), ("left", "centre", "right")):
                draw_text(frame, label, y + 10, x, MUTED, LEGEND_SIZE, anchor)
        else:
            draw_text(frame, f"±{_fmt(scale)}", y + 10, left + width // 2, MUTED, LEGEND_SIZE, "centre",
                      max_width=width)
        draw_text(frame, what, y + 22, left + width // 2, TEXT, LEGEND_SIZE, "centre", max_width=width)

    def caption(self, frame: np.ndarray, lines: list[str]) -> np.ndarray:
        """``frame`` with subtitle ``lines`` drawn into its subtitle band, as a player shows them (for stills)."""
        frame = frame.copy()
        y = self.layout.size[0] - SUBTITLE_BAND + 8
        for line in lines[:3]:
            draw_text(frame, line, y, self.layout.size[1] // 2, TEXT, 16, "centre")
            y += 22
        return frame

    @staticmethod
    def _cursor(frame, top, left, box) -> None:
        """An amber outline one screen pixel outside the cursor's pixel box (y0, x0, y1, x1) on the input panel,
        with cross-hair arms that leave the pixel itself uncovered."""
        y0, x0, y1, x1 = box
        h, w = frame.shape[:2]
        ys = slice(max(top, top + y0 - 1), top + y1 + 1)
        xs = slice(max(left, left + x0 - 1), left + x1 + 1)
        for sl in ((ys, max(left, left + x0 - 1)), (ys, left + x1), (max(top, top + y0 - 1), xs), (top + y1, xs)):
            frame[sl] = CURSOR
        cy, cx = top + (y0 + y1) // 2, left + (x0 + x1) // 2
        arm, gap = 8, 4
        frame[max(0, top + y0 - gap - arm):max(0, top + y0 - gap), cx] = CURSOR
        frame[min(h, top + y1 + gap):min(h, top + y1 + gap + arm), cx] = CURSOR
        frame[cy, max(0, left + x0 - gap - arm):max(0, left + x0 - gap)] = CURSOR
        frame[cy, min(w, left + x1 + gap):min(w, left + x1 + gap + arm)] = CURSOR

    @staticmethod
    def _ticks(frame, top, left, box) -> None:
        """Amber ticks in the margins above and left of a panel at the cursor's rows and columns."""
        y0, x0, y1, x1 = box
        frame[top - 6:top - 2, left + x0:max(left + x1, left + x0 + 1)] = CURSOR
        frame[top + y0:max(top + y1, top + y0 + 1), left - 6:left - 2] = CURSOR
