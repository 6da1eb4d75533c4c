"""Videos of linterp stores: a walk of columns and rows across the image, then the eigen-images, with subtitles.

``write_video(stores, "walk.mp4")`` shows several stores of one image side by side with a shared cursor (the
site's signed colour scale and legend) and writes an H.264 MP4 with an English ``mov_text`` subtitle track
(GIF when the name ends in ``.gif``). The parts, one job each:

- :mod:`~pipeline.export.video.walk` plans the cursor's path from the image (edge, flat area, texture);
- :mod:`~pipeline.export.video.story` decides what each frame shows and writes the subtitles from the stores;
- :mod:`~pipeline.export.video.frames` renders a frame;
- :mod:`~pipeline.export.video.subtitles` formats cues (WebVTT, SubRip);
- :mod:`~pipeline.export.video.encode` pipes the frames through imageio-ffmpeg's binary.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.export import render
from pipeline.export.site import check_same_image
from pipeline.export.video import encode, subtitles
from pipeline.export.video.frames import Layout, Renderer, model_names
from pipeline.export.video.story import panel_titles, tell
from pipeline.progress import progress as progress_bar
from pipeline.verify import open_complete

#: default frame rates: MP4, GIF (GIF frames cost far more bytes)
FPS = {"mp4": 30, "gif": 10}
#: the highest frame rates (a GIF's frame delays are whole hundredths of a second: at most 50 frames a second
#: keep their timing) and the longest film, in seconds, so that a typo cannot ask for billions of frames
MAX_FPS = {"mp4": 120, "gif": 50}
MAX_DURATION = 3600.0
#: frames sampled to make a GIF's palette
PALETTE_SAMPLES = 16
#: the largest frame side in screen pixels (a frame is held in memory several times over while it is drawn)
MAX_SIDE = 8192


class VideoError(ValueError):
    """Stores that cannot be shown in a video (one line)."""


def _check_outputs(out: Path, subtitles_out, still) -> None:
    """Refuse output paths of the wrong kind before any work: a video must be named .mp4 or .gif, subtitles
    .vtt or .srt, a still .png, and none of them may be an existing folder."""
    for path, suffixes, what in ((out, (".mp4", ".gif"), "--out"), (subtitles_out, (".vtt", ".srt"), "--subtitles"),
                                 (still, (".png",), "--still")):
        if path is None:
            continue
        path = Path(path)
        if path.suffix.lower() not in suffixes:
            raise VideoError(f"{what} {path}: the name must end in {' or '.join(suffixes)}")
        if path.is_dir():
            raise VideoError(f"{what} {path}: is a folder")


def _too_large(layout: Layout, stores, titles: list[str]) -> str:
    """Why the frames of ``layout`` (panels titled ``titles``) are more than :data:`MAX_SIDE` a side, and what makes
    them smaller (one line): a smaller --zoom when zoom 1 fits, else a smaller part of the image."""
    def frames(a: Layout) -> str:
        return f"frames of {a.size[1]}×{a.size[0]} pixels; at most {MAX_SIDE} a side"

    smallest = layout if layout.zoom == 1 else Layout.of(stores, 1, titles)
    if max(smallest.size) <= MAX_SIDE:
        return f"--zoom {layout.zoom} makes {frames(layout)} (use a smaller --zoom)"
    h, w = max(s.out_shape[1] for s in stores), max(s.out_shape[2] for s in stores)
    return (f"the stores' {w}×{h}-pixel outputs are too large for a video even at zoom 1 (one screen pixel per "
            f"output pixel): {frames(smallest)}; compute the stores on a smaller part of the image (--crop X,Y,W,H)")


def write_video(store_paths, out, *, duration: float = 30.0, fps: float | None = None, zoom: int | None = None,
                lossless: bool = False, subtitles_out=None, still=None, names: list[str] | None = None,
                notes: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Write the video of ``store_paths`` (complete stores of one image) to ``out``.

    ``duration`` seconds at ``fps`` frames per second (default 30 for MP4, 10 for GIF); ``zoom``: screen pixels
    per output pixel (default: the largest that keeps frames within 1280 × 720, the panels wrapped into rows when
    one row would be wider; with a ``zoom`` given, rows keep frames within 1280 px wide where they can);
    ``lossless``: ``libx264rgb -qp 0`` (exact RGB); ``subtitles_out``: also write the cues to this .vtt / .srt
    file; ``still``: also write one frame (the middle of the walk of columns, with its exact colours and its
    subtitle drawn in) to this PNG file; ``names``: the models' names in the subtitles and over the panels (with
    the model's registry name when they do not hold it; a title wider than its panel's column wraps onto more
    lines, and the first cue names every panel in full); ``notes``: sentences for the first cue. Returns
    {"path", "frames", "duration", "size" (H, W), "cues", "seconds"}.
    """
    t0 = time.perf_counter()
    stores = [open_complete(p) for p in store_paths]
    if not stores:
        raise VideoError("no store given")
    check_same_image(stores)
    for s in stores:
        if s.out_shape[1:] == (1, 1):
            raise VideoError(f"{s.path}: its output is a vector (a classifier), not an image; "
                             f"use `linterp classify` for classifiers")
    out = Path(out)
    _check_outputs(out, subtitles_out, still)
    gif = out.suffix.lower() == ".gif"
    most = MAX_FPS["gif" if gif else "mp4"]
    if not 0 < duration <= MAX_DURATION:  # NaN fails too
        raise VideoError(f"--duration must be a number of seconds in (0, {MAX_DURATION:g}], got {duration:g}")
    if fps is not None and not 0 < fps <= most:
        raise VideoError(f"--fps must be in (0, {most:g}] for {'a GIF' if gif else 'an MP4'}, got {fps:g}"
                         + (" (GIF frame delays are whole hundredths of a second)" if gif else ""))
    fps = fps or FPS["gif" if gif else "mp4"]
    encode.ffmpeg_exe()  # fail in one line before any work
    names = list(names or model_names(stores))
    if len(names) != len(stores):
        raise VideoError(f"{len(names)} names for {len(stores)} stores")
    titles = panel_titles(stores, names)
    layout = Layout.of(stores, zoom, titles)
    if max(layout.size) > MAX_SIDE:
        raise VideoError(_too_large(layout, stores, titles))
    story = tell(stores, duration=duration, fps=fps, names=names, notes=tuple(notes))
    subtitles.check(story.cues, story.duration)
    renderer = Renderer(stores, layout)

    def frames():
        with progress_bar(len(story.views), "video frames", unit="frames", enabled=progress) as bar:
            for view, heading in zip(story.views, story.headings):
                yield renderer.render(view, heading)
                bar.update()

    if gif:
        sample = np.linspace(0, len(story.views) - 1, min(PALETTE_SAMPLES, len(story.views))).round().astype(int)
        palette = [renderer.render(story.views[i], story.headings[i]) for i in sample]
        count = encode.write_gif(out, frames(), layout.size, fps, palette)
    else:
        count = encode.write_mp4(out, frames(), layout.size, fps, subtitles.webvtt(story.cues), lossless=lossless)
    if subtitles_out is not None:
        subtitles.write(subtitles_out, story.cues)
    if still is not None:
        walked = [i for i, v in enumerate(story.views) if v.part == "columns"] or [0]
        i = walked[len(walked) // 2]
        cue = next(c for c in story.cues if c.start <= i / fps < c.end)
        lines = subtitles.wrap(cue.text).split("\n")
        frame = renderer.caption(renderer.render(story.views[i], story.headings[i]), lines)
        Path(still).parent.mkdir(parents=True, exist_ok=True)
        Path(still).write_bytes(render.png_bytes(frame))
    return {"path": out, "frames": count, "duration": story.duration, "size": layout.size,
            "cues": len(story.cues), "seconds": time.perf_counter() - t0}
