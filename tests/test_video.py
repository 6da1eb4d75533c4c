"""`linterp video`: MP4 walks with an embedded English subtitle track, read back through the bundled ffmpeg.

The stores are real Zarr stores of exact linear upscalers (``test_export.linear_upscaler_store``: F is the matrix
of torch's bicubic / bilinear interpolation), so what a frame shows can be checked against the dense F. Videos
are short (a few seconds at 10 fps) and the stores tiny (8×8 inputs), so each test takes seconds.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.export import render
from pipeline.export.site import with_sum
from pipeline.export.video import VideoError, encode, story, walk, write_video
from pipeline.export.video.frames import (BACKGROUND, CURSOR, LABEL, LEGEND, LEGEND_WIDTH, MARGIN, SUBTITLE_BAND, TEXT,
                                          TITLE_SIZE, Layout, text_mask)
from pipeline.export.video.subtitles import Cue, check
from pipeline.store import FileRef, create_store, open_store
from pipeline.store import layout as store_layout
from test_export import linear_upscaler_store

FPS = 10
ZOOM = 4  # screen pixels per output pixel: small frames


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two complete stores of one 8×8 RGB image: bicubic ×4 and bilinear ×4; returns [(store, dense F), …]."""
    root = tmp_path_factory.mktemp("stores")
    return [linear_upscaler_store(root / f"{mode}.zarr", mode=mode, h=8, w=8, tile=4) for mode in
            ("bicubic", "bilinear")]


def ffmpeg(*args: str, text: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([encode.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *args], capture_output=True,
                          text=text, check=True)


def decoded_frames(path, size) -> np.ndarray:
    """All frames of a video as (n, H, W, 3) uint8, decoded by the bundled ffmpeg."""
    raw = ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-", text=False).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, *size, 3)


def muxed_cues(path) -> list[Cue]:
    """The cues of a video's first subtitle stream, extracted as WebVTT from the container."""
    text = ffmpeg("-i", str(path), "-map", "0:s:0", "-f", "webvtt", "-").stdout
    stamp = r"(?:(\d+):)?(\d+):(\d+)\.(\d+)"

    def seconds(m, k):
        h, mi, s, ms = m.group(k), m.group(k + 1), m.group(k + 2), m.group(k + 3)
        return int(h or 0) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000

    cues = []
    for block in text.split("\n\n"):
        m = re.search(stamp + r" --> " + stamp, block)
        if m:
            cues.append(Cue(seconds(m, 1), seconds(m, 5), block[m.end():].strip()))
    return cues


@pytest.fixture(scope="module")
def walk_mp4(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "walk.mp4"
    summary = write_video([s.path for s, _ in pair], out, duration=10.0, fps=FPS, zoom=ZOOM, lossless=True,
                          subtitles_out=out.with_suffix(".srt"), still=out.with_suffix(".png"), progress=False)
    return out, summary


# ---- the container ---------------------------------------------------------------------------------------------
def test_mp4_holds_one_h264_stream_and_one_english_mov_text_stream(walk_mp4):
    out, summary = walk_mp4
    info = encode.probe(out)
    video = [s for s in info["streams"] if s["type"] == "video"]
    subs = [s for s in info["streams"] if s["type"] == "subtitle"]
    assert len(info["streams"]) == 2 and len(video) == 1 and len(subs) == 1
    assert video[0]["codec"] == "h264" and (video[0]["height"], video[0]["width"]) == summary["size"]
    assert video[0]["fps"] == FPS and summary["frames"] == 100
    assert subs[0]["codec"] == "mov_text" and subs[0]["language"] == "eng"
    assert info["duration"] == pytest.approx(10.0, abs=0.05)


def test_cues_cover_the_duration_without_overlaps(walk_mp4):
    out, summary = walk_mp4
    cues = muxed_cues(out)
    assert len(cues) == summary["cues"] >= 3
    assert cues[0].start == 0 and cues[-1].end == pytest.approx(encode.probe(out)["duration"], abs=0.02)
    for a, b in zip(cues, cues[1:]):
        assert a.end == pytest.approx(b.start, abs=1e-3) and a.end > a.start  # contiguous, no overlap
    check(cues, cues[-1].end)
    text = " ".join(" ".join(c.text for c in cues).split())
    assert "share of the output: bicubic-x4 0 %, bilinear-x4 0 %" in text  # exact linear upscalers: r = 0
    srt = out.with_suffix(".srt").read_text()  # the side file holds the same cues
    assert srt.count(" --> ") == len(cues) and cues[1].text.splitlines()[0] in srt


def test_cue_check_refuses_gaps_overlaps_and_short_coverage():
    check([Cue(0, 1, "a"), Cue(1, 2, "b")], 2)
    for bad, duration in (([Cue(0, 1, "a"), Cue(1.5, 2, "b")], 2), ([Cue(0, 1.2, "a"), Cue(1, 2, "b")], 2),
                          ([Cue(0, 1, "a")], 2), ([], 1)):
        with pytest.raises(ValueError):
            check(bad, duration)


# ---- what the frames show --------------------------------------------------------------------------------------
def expected_panel(plane: np.ndarray, zoom: int) -> np.ndarray:
    """A Σ plane drawn as the site draws it (its colour map at ± the plane's max), replicated ``zoom`` times."""
    rgb = render.colourise(plane, float(render.plane_scales(plane)), render.diverging_lut())
    return np.repeat(np.repeat(rgb, zoom, 0), zoom, 1)


def test_lossless_frames_equal_the_site_colour_map_of_the_columns_and_rows(pair, walk_mp4):
    out, summary = walk_mp4
    stores = [s for s, _ in pair]
    frames = decoded_frames(out, summary["size"])
    told = story.tell(stores, duration=10.0, fps=FPS)
    assert len(frames) == len(told.views)
    layout = Layout.of(stores, ZOOM)
    ph, pw = layout.panel
    checked = {"columns": 0, "rows": 0}
    for i, view in enumerate(told.views):
        if view.part not in checked or checked[view.part] >= 3 or i % 4:
            continue
        checked[view.part] += 1
        for j, (store, dense) in enumerate(pair):
            grid = store.in_shape[1:] if view.part == "columns" else store.out_shape[1:]
            (y, x), = walk.to_pixels(np.array([view.position]), store.in_shape[1:], grid)
            # (C_src, C_dst, H_dst, W_dst): a column's source channels are F's input channels, a row's its outputs
            filters = np.moveaxis(dense[..., y, x], 3, 0) if view.part == "columns" else dense[:, y, x]
            plane = with_sum(with_sum(filters)[-1])[-1]  # the site's Σ → Σ: Σ over sources, then over targets
            top, left = layout.panels[j + 1]
            shown = frames[i, top:top + ph, left:left + pw]
            zoom = ph // plane.shape[0]
            assert np.array_equal(shown, expected_panel(plane, zoom)), (view, j)
            # and the colours decode back to F within the 8-bit rendering error
            scale = float(np.abs(plane).max())
            values = render.dequantise(render.decode_colours(shown[::zoom, ::zoom]), scale)
            assert np.abs(values - plane).max() <= scale / 254 + 1e-6
    assert checked == {"columns": 3, "rows": 3}
    walked = [i for i, v in enumerate(told.views) if v.part == "columns"]
    still = render.png_decode(out.with_suffix(".png").read_bytes())  # --still: the middle of the columns' walk,
    band = summary["size"][0] - SUBTITLE_BAND  # with its subtitle drawn in below the panels
    assert np.array_equal(still[:band], frames[walked[len(walked) // 2]][:band])
    assert (still[band:] != frames[0][band:]).any() and (frames[:, band:] == frames[0, band:]).all()


def test_eigen_frames_show_the_stored_singular_vectors(tmp_path):
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    rng = np.random.default_rng(1)
    U, V = rng.standard_normal((2, 1, 32, 32)), rng.standard_normal((2, 1, 8, 8))
    open_store(store.path, mode="r+").write_svd([3.0, 2.0], U, V)
    out = tmp_path / "e.mp4"
    summary = write_video([store.path], out, duration=16.0, fps=FPS, zoom=ZOOM, lossless=True,
                          progress=False)
    frames = decoded_frames(out, summary["size"])
    told = story.tell([open_store(store.path)], duration=16.0, fps=FPS)
    layout = Layout.of([store], ZOOM)
    top, left = layout.panels[1]
    ph, pw = layout.panel
    seen = set()
    for i, view in enumerate(told.views):
        if view.part in ("eigen-inputs", "eigen-outputs"):
            vec = (V if view.part == "eigen-inputs" else U)[view.k, 0].astype(np.float32)
            assert np.array_equal(frames[i, top:top + ph, left:left + pw], expected_panel(vec, ph // vec.shape[0]))
            seen.add((view.part, view.k))
    assert seen == {("eigen-inputs", 0), ("eigen-outputs", 0), ("eigen-inputs", 1), ("eigen-outputs", 1)}
    assert "σ1: bicubic-x4 3.00" in " ".join(c.text for c in told.cues)


def test_gif_still_works(pair, tmp_path):
    import imageio.v3 as iio

    stores = [s for s, _ in pair]
    out = tmp_path / "walk.gif"
    res = CliRunner().invoke(main, ["video", *[str(s.path) for s in stores], "--out", str(out), "--duration", "2",
                                    "--fps", "5", "--zoom", str(ZOOM), "--quiet"])
    assert res.exit_code == 0, res.output
    assert ", no subtitles (a GIF holds none: --subtitles FILE.vtt writes them), in " in res.output  # not "N cues"
    frames = iio.imread(out, index=None)
    layout = Layout.of(stores, ZOOM)
    assert frames.shape[:3] == (10,) + layout.size
    told = story.tell(stores, duration=2, fps=5)
    i = next(k for k, v in enumerate(told.views) if v.part == "columns")
    store, dense = pair[0]
    (y, x), = walk.to_pixels(np.array([told.views[i].position]), store.in_shape[1:], store.in_shape[1:])
    plane = dense[..., y, x].sum(axis=3).sum(axis=0)
    top, left = layout.panels[1]
    ph, pw = layout.panel
    gif = frames[i, top:top + ph, left:left + pw, :3].astype(float)  # 256-colour palette: compare loosely
    exact = expected_panel(plane, ph // plane.shape[0]).astype(float)
    assert np.abs(gif - exact).mean() < 4 and np.corrcoef(gif.ravel(), exact.ravel())[0, 1] > 0.98


# ---- the walk and the subtitles' figures -----------------------------------------------------------------------
def length(seg: walk.Segment) -> float:
    return float(np.linalg.norm(np.diff(seg.points, axis=0), axis=1).sum())


def test_walk_follows_the_edge_crosses_the_flat_area_and_circles_the_texture():
    img = np.zeros((1, 48, 48))
    img[:, :, 24:] = 1.0  # a vertical edge between columns 23 and 24
    img[:, 4:20, 30:46] = 0.5 + 0.5 * np.random.default_rng(0).random((16, 16))  # a texture on the bright side
    segments = walk.plan(img)
    kinds = [s.kind for s in segments]
    assert kinds[0] == "edge" and sorted(kinds[2::2]) == ["flat", "texture"] and set(kinds[1::2]) == {"move"}
    seg = {s.kind: s for s in segments}
    edge_x = seg["edge"].points[:, 1]
    assert length(seg["edge"]) >= 20 and np.all(np.abs(edge_x - 24) <= 1)
    flat = seg["flat"].points
    in_texture = (flat[:, 0] >= 3) & (flat[:, 0] <= 21) & (flat[:, 1] >= 29)
    assert seg["flat"].figures["local_std"] < 1e-6 and np.all(np.abs(flat[:, 1] - 24) > 2) and not in_texture.any()
    centre = seg["texture"].points.mean(0)
    assert 4 <= centre[0] <= 20 and 30 <= centre[1] <= 46 and seg["texture"].figures["coherence"] < 0.5
    pos, owner = walk.pace(segments, 200)
    steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    step = sum(length(s) for s in segments) / 199  # equal arc length per frame: a steady pace, joins included
    assert steps.max() <= step * (1 + 1e-9) and np.mean(np.abs(steps - step) < 0.02 * step) > 0.9
    assert np.all(np.diff(owner) >= 0) and set(owner) == set(range(len(segments)))


def test_residual_share_and_geometry_sentences(tmp_path):
    y0 = np.array([[[3.0, -1.0]]])
    r = np.array([[[1.0, 0.0]]])  # F·x0 = (2, -1): share Σ|r| / (Σ|F·x0| + Σ|r|) = 1 / (3 + 1)
    assert story.residual_share(y0, r) == pytest.approx(0.25)
    assert story.residual_share(y0, r, np.array([[0, 0]])) == pytest.approx(1 / 3)
    assert story.residual_share(y0, r, np.array([[0, 1], [0, 1]])) == 0
    store, _ = linear_upscaler_store(tmp_path / "g.zarr", c=1, h=8, w=8, tile=4)
    open_store(store.path, mode="r+").update_attrs(geometry={
        "adaptivity": 0.0, "flashlight_top1": 0.015, "flashlight_mrr": 0.05, "flashlight_chance": 0.0156,
        "samples": 64, "diagonal_share": 0.41, "reach90": 2.5, "global_share": 0.03, "global_radius": 8,
        "flat_edge_ratio": 0.06})
    told = story.tell([open_store(store.path)], duration=120, fps=2)
    text = " ".join(c.text for c in told.cues).replace("\u00a0", " ")  # percentages are kept on one line
    for said in ("right for: bicubic-x4 1.5 % (chance 1.6 %)",
                 "adaptivity, 0 = one filter everywhere): bicubic-x4 0.00", "own pixel: bicubic-x4 41 %",
                 "90 % of a column's mass, in input pixels: bicubic-x4 2.5",
                 "farther than 8 input pixels: bicubic-x4 3.0 %", "carry bicubic-x4 6.0 % of the mass"):
        assert said in text


def test_short_cues_keep_their_most_important_sentence_and_every_stretch():
    said = [story.Said(((1, "b" * 30), (0, "a" * 30), (2, "c" * 30)), "the b")]
    assert story.fit(said, 1.0, cps=25) == "The b. " + "a" * 30  # the lead shortened to its gist, not dropped
    assert story.fit(said, 3.0, cps=25) == "b" * 30 + " " + "a" * 30
    assert story.fit(said, 10.0, cps=25) == " ".join(["b" * 30, "a" * 30, "c" * 30])
    move = story.Said(((1, "m" * 30),), "on to d", passing=True)
    d = story.Said(((1, "d" * 30), (3, "e" * 30)), "across d")
    assert story.fit(said + [move], 3.0, cps=25) == "The b, then on to d. " + "a" * 30  # the move is said
    assert story.fit(said + [move, d], 3.0, cps=25) == "The b, then across d. " + "a" * 30  # "then": the move
    assert story.fit([move, d], 3.0, cps=25) == "m" * 30 + " " + "d" * 30
    assert story.fit([move, d], 1.0, cps=25) == "On to d, then across d."


# ---- errors ----------------------------------------------------------------------------------------------------
def test_missing_or_broken_ffmpeg_is_one_line(pair, tmp_path, monkeypatch):
    broken = tmp_path / "ffmpeg"
    broken.write_text("#!/bin/sh\necho 'exec format error' >&2\nexit 1\n")
    broken.chmod(0o755)
    for exe, message in ((tmp_path / "missing", "does not run"), (broken, "does not run")):
        monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(exe))
        res = CliRunner().invoke(main, ["video", str(pair[0][0].path), "--out", str(tmp_path / "w.mp4"), "--quiet"])
        assert res.exit_code != 0 and message in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "w.mp4").exists()
    lacking = tmp_path / "old-ffmpeg"  # runs, but was built without libx264
    lacking.write_text("#!/bin/sh\necho ' V....D mpeg4   MPEG-4 part 2'\necho ' S..... mov_text  3GPP'\n")
    lacking.chmod(0o755)
    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(lacking))
    with pytest.raises(encode.EncoderError, match="lacks the encoder.*libx264"):
        encode.ffmpeg_exe()


def test_an_interrupted_encode_leaves_the_old_file_and_no_partial_one(tmp_path):
    out = tmp_path / "walk.mp4"
    out.write_bytes(b"the previous video")

    def frames():
        for i in range(5):
            yield np.full((16, 16, 3), 40 * i, np.uint8)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        encode.write_mp4(out, frames(), (16, 16), 10, None)
    assert out.read_bytes() == b"the previous video" and sorted(p.name for p in tmp_path.iterdir()) == ["walk.mp4"]
    with pytest.raises(ValueError, match="frame 0 is"):  # a frame of the wrong size: one line, nothing written
        encode.write_gif(tmp_path / "w.gif", [np.zeros((8, 8, 3), np.uint8)], (16, 16), 10,
                         [np.zeros((16, 16, 3), np.uint8)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.mp4"]


KILLED_ENCODE = """
import os, signal, sys
import numpy as np
from pipeline.export.video import encode

def frames():
    for i in range(30):
        if i == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # killed while ffmpeg encodes, its side files beside the output
        yield np.full((16, 16, 3), 8 * i, np.uint8)

encode.write_mp4(encode.Path(sys.argv[1]), frames(), (16, 16), 10, "WEBVTT\\n\\n00:00.000 --> 00:01.000\\nhi\\n")
"""


def test_a_killed_encode_leaves_nothing_that_the_next_run_does_not_clear(tmp_path):
    out = tmp_path / "walk.mp4"
    killed = subprocess.run([sys.executable, "-c", KILLED_ENCODE, str(out)], capture_output=True)
    assert killed.returncode == -signal.SIGKILL and not out.exists()
    encode.write_mp4(out, [np.full((16, 16, 3), 9, np.uint8)] * 4, (16, 16), 10, "WEBVTT\n\n")
    assert [p.name for p in tmp_path.iterdir()] == ["walk.mp4"]


def test_bad_inputs_are_one_line(pair, tmp_path):
    (tmp_path / "junk").mkdir()
    runner = CliRunner()
    for args in (["video", str(tmp_path / "junk"), "--out", str(tmp_path / "w.mp4")],
                 ["video", "--out", str(tmp_path / "w.mp4")],
                 ["video", str(pair[0][0].path), "--film", "FilterMatrix_SR", "--out", str(tmp_path / "w.mp4")],
                 ["video", str(pair[0][0].path), "--crop", "1,2", "--out", str(tmp_path / "w.mp4")],
                 ["video", str(pair[0][0].path), "--defaults", "--image", "x.png", "--out", str(tmp_path / "w.mp4")]):
        res = runner.invoke(main, args)
        assert res.exit_code != 0 and "Error:" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    other, _ = linear_upscaler_store(tmp_path / "other.zarr", h=8, w=8, tile=4, seed=3)
    with pytest.raises(ValueError, match="another image"):
        write_video([pair[0][0].path, other.path], tmp_path / "w.mp4", progress=False)
    with pytest.raises(VideoError, match="names"):
        write_video([pair[0][0].path], tmp_path / "w.mp4", names=["a", "b"], progress=False)
    notes = tmp_path / "notes.txt"  # a file of the user's under a name that is not a video's: refused, kept
    notes.write_text("mine")
    store = pair[0][0].path
    for kwargs, match in (({"out": notes}, "must end in .mp4 or .gif"), ({"out": tmp_path / "junk.mp4"}, None),
                          ({"out": tmp_path / "w.mp4", "subtitles_out": notes}, "--subtitles"),
                          ({"out": tmp_path / "w.mp4", "still": tmp_path / "s.jpg"}, "--still"),
                          ({"out": tmp_path / "w.mp4", "zoom": 10**4}, "at most 8192"),
                          ({"out": tmp_path / "w.mp4", "fps": 1e9}, r"--fps must be in \(0, 120\] for an MP4"),
                          ({"out": tmp_path / "w.gif", "fps": 60}, r"\(0, 50\] for a GIF, got 60 \(GIF frame delays"),
                          ({"out": tmp_path / "w.mp4", "duration": 1e9}, r"--duration must be .* \(0, 3600\]"),
                          ({"out": tmp_path / "w.mp4", "duration": float("nan")}, "--duration must be")):
        if kwargs["out"].name == "junk.mp4":
            kwargs["out"].mkdir()
            match = "is a folder"
        with pytest.raises(VideoError, match=match):
            write_video([store], progress=False, **kwargs)
    assert notes.read_text() == "mine" and not (tmp_path / "w.mp4").exists()


# ---- the paper's films -----------------------------------------------------------------------------------------
def test_film_builds_its_bundles_stores_then_reuses_them_from_anywhere_under_out(tmp_path, monkeypatch):
    import dataclasses
    import shutil
    from pathlib import Path

    from pipeline import bundle

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bundle, "SVD_MAX_ITER", 2)  # a rough SVD is enough here, and quick
    # the film takes its models from the bundles: a new stand-in of EDSR4x (here the cheap bicubic) is picked up
    monkeypatch.setitem(bundle.BUNDLES, "EDSR4x", dataclasses.replace(bundle.BUNDLES["EDSR4x"],
                                                                      stand_ins=("bicubic-x4",)))
    args = ["video", "--film", "FilterMatrix_SR", "--defaults", "--crop", "46,38,4,4", "--duration", "3",
            "--zoom", "2", "--quiet", "--out", "dist/FilterMatrix_SR.mp4"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output.count("computing F(x0)") == 3 and "wrote dist/FilterMatrix_SR.mp4" in first.output
    assert re.search(r", \d+ subtitle cues \(in the video\), in ", first.output), first.output
    kinds = sorted((s["type"], s["codec"], s["language"]) for s in encode.probe("dist/FilterMatrix_SR.mp4")["streams"])
    assert kinds == [("subtitle", "mov_text", "eng"), ("video", "h264", None)]
    stores = {p.parent.parent.name.split("-")[0]: p for p in Path("out/bundles").glob("*/stores/*.zarr")}
    assert {k: p.name for k, p in stores.items()} == {"Bicubic4x": "bicubic-x4.zarr", "EDSR4x": "bicubic-x4.zarr",
                                                      "4L": "pixelshuffle-x4.zarr"}
    assert "stands in for the official edsr-baseline-x4" in open_store(stores["EDSR4x"]).attrs["note"]
    demo = tmp_path / "out" / "demo" / "stores"
    demo.mkdir(parents=True)
    for key in ("Bicubic4x", "4L"):  # the demo's folder holds stores of the same inputs: they are found there
        shutil.move(stores[key], demo / stores[key].name)
    shutil.rmtree(stores["EDSR4x"])
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("reusing the complete store out/demo/stores/") == 3 and "computing" not in again.output


def test_film_without_official_weights_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LINTERP_CACHE", str(tmp_path / "cache"))
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):  # no network: a closed local port
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    res = CliRunner().invoke(main, ["video", "--film", "FilterMatrix_SR", "--out", "x.mp4", "--quiet"])
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert "edsr_baseline_x4-6b446fab.pt" in lines[0] and str(tmp_path / "cache") in lines[0]
    assert "DEFAULTS=1" in lines[0] and "WEIGHTS" not in lines[0] and not (tmp_path / "x.mp4").exists()


def test_a_narrow_tall_image_gets_a_default_zoom_that_fits_and_a_frame_wide_enough_for_its_text(tmp_path):
    """A 20×1 crop (a ×4 output of 80×4): the default zoom used to fit the width alone (frames of 1280×12508, then
    refused with "use a smaller --zoom" although no zoom was given); the frame must also be wide enough for its
    heading and subtitles (it was 80 px wide)."""
    store, _ = linear_upscaler_store(tmp_path / "thin.zarr", h=20, w=1, tile=4)
    summary = write_video([store.path], tmp_path / "thin.mp4", duration=2.0, fps=5, progress=False)
    h, w = summary["size"]
    assert h <= 720 and w >= 560, summary["size"]
    assert decoded_frames(tmp_path / "thin.mp4", summary["size"]).shape[0] == 10


def test_an_image_too_large_for_a_video_at_zoom_1_is_told_to_be_cropped_not_to_lower_the_zoom(tmp_path):
    """A store whose one output panel is 8200 px tall makes frames over 8192 px a side even at zoom 1, the default's
    smallest: refused in one line that says so and asks for a smaller part of the image,
    not for "a smaller --zoom" (none fits); a --zoom that overshoots where zoom 1 fits is still told to be lowered."""
    tall = tmp_path / "tall.zarr"  # one input pixel copied down a column of 8200 output pixels
    attrs = {"model": "column", "image": FileRef("dot", f"{0:064x}"), "crop": None, "scale": 1,
             "weights": FileRef(None, None), "verification": {"status": "passed", "checks": [], "max_abs_error": 0.0}}
    shards, chunks, tasks = store_layout((1, 1, 1), (1, 8200, 1), 1)
    made = create_store(tall, identity={"model": "column", "image": "dot", "seed": 0}, attrs=attrs,
                        x0=np.ones((1, 1, 1), np.float32), y0=np.ones((1, 8200, 1), np.float32),
                        residual=np.zeros((1, 8200, 1), np.float32), shards=shards, chunks=chunks, tasks=tasks)
    made.F[...] = 1.0
    made.update_attrs(complete=True)
    for zoom in (None, 1, 2):  # (at zoom 2, a smaller zoom would not do either)
        with pytest.raises(VideoError) as err:
            write_video([tall], tmp_path / "tall.mp4", zoom=zoom, progress=False)
        message = str(err.value)
        assert "\n" not in message and "smaller --zoom" not in message, message
        assert re.fullmatch(r"the stores' 1×8200-pixel outputs are too large for a video even at zoom 1 .*: frames of "
                            r"\d+×\d+ pixels; at most 8192 a side; compute the stores on a smaller part of the image "
                            r"\(--crop X,Y,W,H\)", message), message
    small, _ = linear_upscaler_store(tmp_path / "small.zarr", c=1, h=4, w=4, tile=4)
    with pytest.raises(VideoError, match=r"^--zoom 1024 makes frames of \d+×\d+ pixels; at most 8192 a side \(use a "
                                         r"smaller --zoom\)$"):
        write_video([small.path], tmp_path / "tall.mp4", zoom=1024, progress=False)
    assert not (tmp_path / "tall.mp4").exists()


def test_a_part_too_short_to_leave_its_first_move_is_told_not_a_key_error(tmp_path):
    """On a 20×1 image a video of a few frames gives a part whose frames all lie on a move of the walk; its cue
    took the move's (missing) figures: KeyError 'gradient_ratio' instead of a video."""
    store, _ = linear_upscaler_store(tmp_path / "thin.zarr", h=20, w=1, tile=4)
    for frames in range(1, 8):
        told = story.tell([open_store(store.path)], duration=frames / 5, fps=5)
        assert len(told.views) == frames and told.cues[0].start == 0 and told.cues[-1].end == frames / 5
        assert all(c.text for c in told.cues)


# ---- legends of narrow panels, cues of short videos and of moves -------------------------------------------------
def srt_cues(path) -> list[Cue]:
    """The cues of a SubRip file."""
    stamp = r"(\d+):(\d+):(\d+),(\d+)"
    cues = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        m = re.search(stamp + " --> " + stamp, block)
        t = [int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 1000 for h, mi, s, ms in (m.groups()[:4],
                                                                                          m.groups()[4:])]
        cues.append(Cue(t[0], t[1], " ".join(block[m.end():].split())))
    return cues


def ink_columns(region: np.ndarray) -> np.ndarray:
    """The columns of ``region`` (h, w, 3) that hold anything but the frame's background colour."""
    return np.flatnonzero((region != np.array(BACKGROUND, np.uint8)).any(axis=2).any(axis=0))


def test_legends_of_panels_24_pixels_wide_stay_in_their_own_column_of_the_frame(tmp_path):
    """A 20×1 image (×4: outputs of 80×4) gets panels 24 px wide at the default zoom: the legend's "+s" label,
    right-aligned on the panel, started 20 px left of it (in the margin and the input panel's column), "-s" ran
    into the margin on the right, "no SVD in this store" (138 px) spread over both neighbours, and "column of
    (y, x)" was cut to 24 px. Checked on the decoded frames of `linterp video --lossless`: outside the panels'
    columns (each panel's column ends a margin before the next panel) the title and legend bands are empty,
    and what a legend says is drawn whole."""
    a, _ = linear_upscaler_store(tmp_path / "a.zarr", h=20, w=1, tile=4)
    b, _ = linear_upscaler_store(tmp_path / "b.zarr", mode="bilinear", h=20, w=1, tile=4)
    rng = np.random.default_rng(2)  # one store with an SVD, one without ("no SVD in this store")
    open_store(a.path, mode="r+").write_svd([2.0], rng.standard_normal((1, 3, 80, 4)),
                                            rng.standard_normal((1, 3, 20, 1)))
    stores = [open_store(a.path), open_store(b.path)]
    out = tmp_path / "thin.mp4"
    res = CliRunner().invoke(main, ["video", str(a.path), str(b.path), "--out", str(out), "--duration", "4",
                                    "--fps", "5", "--lossless", "--quiet"])
    assert res.exit_code == 0, res.output
    layout = Layout.of(stores)
    (top, _), ph, pw = layout.panels[0], *layout.panel
    assert pw == 24  # the case reported
    frames = decoded_frames(out, layout.size)
    told = story.tell(stores, duration=4, fps=5)
    assert len(frames) == len(told.views)
    lefts = [left for _, left in layout.panels]
    ends = [nxt - MARGIN for nxt in lefts[1:]] + [layout.size[1] - MARGIN]  # a panel's column: [left, end)
    inside = np.zeros(layout.size[1], bool)
    for left, end in zip(lefts, ends):
        inside[left:end] = True
    ticks = np.zeros(layout.size[1], bool)  # the cursor's ticks left of each panel, in the margin
    for left in lefts:
        ticks[left - 6:left - 2] = True
    legend_band = slice(top + ph, top + ph + LEGEND)
    title_band = slice(top - LABEL, top - 6)
    whole = 0
    for i, (frame, view) in enumerate(zip(frames, told.views)):
        for band in (legend_band, title_band):
            assert inside[ink_columns(frame[band])].all(), (i, view, band)
        beside = frame[top:top + ph][:, ~inside & ~ticks]  # beside the panels, in their rows: the cursor only
        assert ((beside == np.array(BACKGROUND, np.uint8)) | (beside == np.array(CURSOR, np.uint8))).all(-1).all()
        if view.part == "columns":  # the legend says which column it shows, whole
            for j, store in enumerate(stores):
                (y, x), = walk.to_pixels(np.array([view.position]), store.in_shape[1:], store.in_shape[1:])
                drawn = ink_columns(frame[top + ph + 4 + 8:top + ph + LEGEND, lefts[j + 1]:ends[j + 1]])
                said = np.flatnonzero(text_mask(f"column of ({y}, {x})", 12).any(axis=0))
                assert drawn[-1] - drawn[0] >= said[-1] - said[0], (i, j)
                whole += 1
    assert whole >= 2


def ink(region: np.ndarray, colour=TEXT) -> float:
    """How much text of ``colour`` a region (h, w, 3) of a frame holds: the sum of the coverage each pixel shows
    between the frame's background (0) and ``colour`` (1), read from the first channel."""
    bg, fg = float(BACKGROUND[0]), float(colour[0])
    return float(((region[..., 0].astype(np.float64) - bg) / (fg - bg)).clip(0, 1).sum())


def test_a_long_title_over_a_thin_panel_wraps_whole_inside_its_column_and_is_named_in_full_in_the_subtitles(
        tmp_path):
    """A panel 24 px wide gets a column (slot) of 160 px, and its title "PixelShuffle (bicubic-x4)" (183 px) was
    cut at the slot's edge ("PixelShuffle (bicubi"). From the decoded frames of a lossless video: every title stays
    inside its panel's column, the one that fits in two lines is drawn whole (all the ink of its glyphs), and the
    first subtitle cue names every panel in full, a title too long for the column's three lines included."""
    a, _ = linear_upscaler_store(tmp_path / "a.zarr", c=1, h=20, w=1, tile=4)
    b, _ = linear_upscaler_store(tmp_path / "b.zarr", c=1, mode="bilinear", h=20, w=1, tile=4)
    stores = [open_store(a.path), open_store(b.path)]
    names = ["PixelShuffle", "CycleGAN Photo2Label trained on Cityscapes with the recipe of linterp's stand-ins"]
    out, srt = tmp_path / "thin.mp4", tmp_path / "thin.srt"
    summary = write_video([a.path, b.path], out, duration=2, fps=5, lossless=True, names=names, subtitles_out=srt,
                          progress=False)
    titles = story.panel_titles(stores, names)
    assert titles[0] == "PixelShuffle (bicubic-x4)" and text_mask(titles[0], TITLE_SIZE).shape[1] > LEGEND_WIDTH
    layout = Layout.of(stores, None, titles)
    assert layout.size == summary["size"] and layout.panel[1] == 24 and layout.slot == LEGEND_WIDTH
    frame = decoded_frames(out, layout.size)[0]  # the outputs: no cursor, no ticks in the title band
    (top, _), label = layout.panels[0], layout.label
    band = frame[top - label:top - 2]
    inside = np.zeros(layout.size[1], bool)
    for _, left in layout.panels:
        inside[left:left + layout.slot] = True
    assert inside[ink_columns(band)].all()  # no title runs into a margin or a neighbour's column
    left = layout.panels[1][1]
    whole = text_mask(titles[0], TITLE_SIZE).astype(np.float64).sum() / 255  # the glyphs' ink (spaces have none)
    assert ink(band[:, left:left + layout.slot]) == pytest.approx(whole, rel=0.01)
    left = layout.panels[2][1]
    assert ink(band[:, left:left + layout.slot]) > 0
    first = " ".join(srt_cues(srt)[0].text.split())
    assert all(t in first for t in titles), first


def test_titles_are_measured_prefix_by_prefix_as_drawn_and_twenty_stores_are_laid_out_at_once(tmp_path):
    """`Layout.of` tries every column count × zoom, wrapping every title at each slot width; wrapping measured each
    prefix of each line with `text_mask` (0.4–0.9 s for 20 stores with long titles). The widths of all prefixes at
    once are those `text_mask` draws (symbols and spaces included), and 20 stores under long titles are laid out in
    well under 0.15 s (about 0.02 s), their titles within their slots."""
    import time

    from pipeline.export.video.frames import prefix_widths

    for text in ("PixelShuffle (bicubic-x4)", "Σ → σ × ±… u₁ ᵀ", "a  b", "W" * 30 + "/i_i-i"):
        widths = prefix_widths(text, TITLE_SIZE)
        assert widths[0] == 0 and all(widths[k] == text_mask(text[:k], TITLE_SIZE).shape[1]
                                      for k in range(1, len(text) + 1)), text
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=8, w=8, tile=4)
    stores = [open_store(store.path)] * 20
    titles = [f"laid-out_model_{i}_of_twenty_" * 8 + f"with a long name {i}" for i in range(20)]
    for title in titles:  # the glyphs drawn once (loading the font is no part of laying out)
        text_mask(title, TITLE_SIZE)
    start = time.perf_counter()
    layout = Layout.of(stores, None, titles)
    assert time.perf_counter() - start < 0.15
    assert layout.fits and layout.rows >= 2
    assert all(text_mask(line, TITLE_SIZE).shape[1] <= layout.slot for lines in layout.titles for line in lines)


def test_eight_narrow_stores_wrap_into_rows_of_a_frame_at_most_1280_by_720_with_whole_legends(tmp_path):
    """With 8 stores of a 20×1 image every panel needs a 160-px column: one row made frames of 1600 px, wider
    than the 1280 × 720 the default zoom promises (720p, H.264 level 3.1). From the decoded frames of a lossless
    video: the frame is within 1280 × 720 with even sides, the panels are in rows, each panel shows its store's
    column exactly, and each legend says which column it shows, whole, inside its own column of the frame."""
    paths = [linear_upscaler_store(tmp_path / f"s{i}.zarr", c=1, mode=("bicubic", "bilinear")[i % 2], h=20, w=1,
                                   tile=4, image="thin")[0].path for i in range(8)]
    stores = [open_store(p) for p in paths]
    out = tmp_path / "eight.mp4"
    summary = write_video(paths, out, duration=2, fps=5, lossless=True, progress=False)
    h, w = summary["size"]
    video, = [s for s in encode.probe(out)["streams"] if s["type"] == "video"]
    assert (video["height"], video["width"]) == (h, w) and w <= 1280 and h <= 720 and h % 2 == w % 2 == 0
    layout = Layout.of(stores)
    assert layout.size == (h, w) and layout.rows >= 2
    frames = decoded_frames(out, layout.size)
    told = story.tell(stores, duration=2, fps=5)
    ph, pw = layout.panel
    i = next(k for k, v in enumerate(told.views) if v.part == "columns")
    frame, view = frames[i], told.views[i]
    ends = {}  # each panel's column ends a margin before the next panel of its row, or at the frame's edge
    for (top, left), nxt in zip(layout.panels, layout.panels[1:] + ((None, None),)):
        ends[top, left] = nxt[1] - MARGIN if nxt[0] == top else layout.size[1]
    for j, store in enumerate(stores):
        top, left = layout.panels[j + 1]
        (y, x), = walk.to_pixels(np.array([view.position]), store.in_shape[1:], store.in_shape[1:])
        plane = np.asarray(store.F[0, :, :, 0, y, x], np.float32)
        assert np.array_equal(frame[top:top + ph, left:left + pw], expected_panel(plane, layout.zoom)), j
        legend = frame[top + ph:top + ph + LEGEND]
        drawn = ink_columns(legend)
        drawn = drawn[(drawn >= left - MARGIN) & (drawn < ends[top, left])]
        assert drawn.min() >= left and drawn.max() < left + layout.slot, j
        said = np.flatnonzero(text_mask(f"column of ({y}, {x})", 12).any(axis=0))
        text = ink_columns(legend[4 + 22 + 1:, left:left + layout.slot])  # its last line, under the scale's
        assert text[-1] - text[0] == said[-1] - said[0], j


def shown(told: story.Story, segments: list[walk.Segment]) -> list[tuple]:
    """What each frame of ``told`` shows: (part, the walk's segment index or the eigen-pair, kind)."""
    out, start = [], 0
    for i in range(1, len(told.views) + 1):  # the walk is paced over each part's frames
        if i < len(told.views) and told.views[i].part[:5] == told.views[start].part[:5]:
            continue
        part = told.views[start].part
        if part in ("columns", "rows"):
            _, owner = walk.pace(segments, i - start)
            out += [(part, int(j), segments[j].kind) for j in owner]
        else:
            out += [(part[:5], v.k, part) for v in told.views[start:i]]
        start = i
    return out


def video_cues(tmp_path, side: int, pairs: int, seconds: float):
    """(store, the cues of the SubRip file `linterp video` writes, the story told) for a ×4 upscaler's store of a
    side × side grey image with `pairs` random eigen-pairs, filmed for `seconds` at zoom 1."""
    store, _ = linear_upscaler_store(tmp_path / "s.zarr", c=1, h=side, w=side, tile=4)
    rng = np.random.default_rng(1)
    open_store(store.path, mode="r+").write_svd(np.arange(pairs, 0, -1) + 0.0,
                                                rng.standard_normal((pairs, 1, 4 * side, 4 * side)),
                                                rng.standard_normal((pairs, 1, side, side)))
    srt = tmp_path / "w.srt"
    res = CliRunner().invoke(main, ["video", str(store.path), "--out", str(tmp_path / "w.mp4"), "--duration",
                                    str(seconds), "--fps", str(FPS), "--zoom", "1", "--subtitles", str(srt), "--quiet"])
    assert res.exit_code == 0, res.output
    return store, srt_cues(srt), story.tell([open_store(store.path)], duration=seconds, fps=FPS)


@pytest.mark.parametrize("seconds", [3, 4.5, 6])
def test_a_short_video_has_a_cue_per_part(tmp_path, seconds):
    """Videos of 3–6 s had a single cue: stretches shorter than 1.5 s joined the previous cue whatever its length
    and its part, so every cue grew into the next. Cues must follow the parts: from the SubRip file `linterp
    video` writes, a cue starts at every boundary between two parts that last at least 0.6 s (a shorter part
    shares a cue), and a cue starts or ends only where what is shown changes."""
    store, cues, told = video_cues(tmp_path, side=8, pairs=2, seconds=seconds)
    parts = [v.part[:5] for v in told.views]  # eigen-inputs and eigen-outputs: one part
    edges = [i for i in range(1, len(parts)) if parts[i] != parts[i - 1]]
    spans = list(zip([0] + edges, edges + [len(parts)]))
    assert [parts[a] for a, _ in spans] == ["outpu", "colum", "rows", "eigen"]
    long = [(b - a) / FPS >= 0.6 for a, b in spans]  # docs/video.md: a part of 0.6 s has a cue of its own
    must = [a / FPS for (a, _), before, after in zip(spans[1:], long, long[1:]) if before and after]
    starts = [c.start for c in cues]
    for t in must:
        assert any(abs(t - s) < 1e-3 for s in starts), (t, starts)
    what = shown(told, walk.plan(open_store(store.path).x0))
    changes = {0.0, seconds} | {i / FPS for i in range(1, len(what)) if what[i] != what[i - 1]}
    for c in cues:
        assert any(abs(c.start - t) < 1e-3 for t in changes) and any(abs(c.end - t) < 1e-3 for t in changes)
    assert len(cues) >= len(must) + 1 >= 3
    assert cues[0].start == 0 and cues[-1].end == pytest.approx(seconds, abs=1e-3)


def test_cues_say_what_is_on_screen_during_the_walks_moves(pair, tmp_path):
    """During a move of the walk (the cursor going from one stretch to the next) the cue named the stretch ahead
    ("Across a flat area, …" from the first frame of the move). From the SubRip file `linterp video` writes, at
    every frame: on a stretch, the cue names that stretch; on a move, the cue is the one of the stretch it leaves
    or says that the cursor moves on to the stretch ahead, and never names the stretch ahead as if it were shown
    (only after the stretch it leaves or the move: "Along the strongest edge, then around a texture.")."""
    stores = [s for s, _ in pair]
    srt = tmp_path / "w.srt"
    seconds, fps = 30, 2
    res = CliRunner().invoke(main, ["video", *[str(s.path) for s in stores], "--out", str(tmp_path / "w.mp4"),
                                    "--duration", str(seconds), "--fps", str(fps), "--zoom", "1", "--subtitles",
                                    str(srt), "--quiet"])
    assert res.exit_code == 0, res.output
    cues = srt_cues(srt)
    told = story.tell(stores, duration=seconds, fps=fps)
    segments = walk.plan(stores[0].x0)
    names = {"edge": ("along the strongest edge", "along this edge"),
             "flat": ("across a flat area", "across this flat area"),
             "texture": ("around a texture", "around this texture")}
    ahead = {"edge": "an edge", "flat": "a flat area", "texture": "a texture"}

    def first(text, phrases):  # where the first of ``phrases`` is said in ``text`` (lower case); None: nowhere
        return min((text.find(p) for p in phrases if p in text), default=None)

    moves = 0
    for i, (part, j, kind) in enumerate(shown(told, segments)):
        if part not in ("columns", "rows"):
            continue
        t = (i + 0.5) / fps
        cue, = [c for c in cues if c.start <= t < c.end]
        text = cue.text.lower()
        if kind == "move":
            moves += 1
            left, next_ = segments[j - 1].kind, segments[j + 1].kind
            said = first(text, names[left] + (f"on to {ahead[next_]}",))
            assert said is not None, (i, cue)
            assert first(text, names[next_]) is None or first(text, names[next_]) > said, (i, part, cue)
        else:
            assert first(text, names[kind]) is not None, (i, part, kind, cue)
    assert moves >= 4


@pytest.mark.parametrize("seconds", [8, 12, 30])
def test_every_stretch_move_and_eigen_pair_is_said_in_its_cue(tmp_path, seconds):
    """A cue too short for all its sentences kept the most important ones only: a short move's sentence ("Then the
    cursor moves on to a texture.") went, and where several stretches shared a cue (a short video) all but the
    first went ("Along the strongest edge, …" over the texture and the flat area too). From the SubRip file
    `linterp video` writes: every cue over a stretch of the walk names it, every cue over a move says where the
    cursor goes (or names the stretches on both sides, in order), and every cue over an eigen-pair names it."""
    store, cues, told = video_cues(tmp_path, side=16, pairs=3, seconds=seconds)
    segments = walk.plan(open_store(store.path).x0)
    names = {"edge": "along the strongest edge", "flat": "across a flat area", "texture": "around a texture"}
    ahead = {"edge": "an edge", "flat": "a flat area", "texture": "a texture"}
    what = shown(told, segments)
    runs = [(a, b) for a, b in zip([0] + [i for i in range(1, len(what)) if what[i] != what[i - 1]],
                                   [i for i in range(1, len(what)) if what[i] != what[i - 1]] + [len(what)])]
    kinds = set()
    for a, b in runs:
        part, j, kind = what[a]
        for cue in [c for c in cues if c.start < b / FPS - 1e-6 and c.end > a / FPS + 1e-6]:
            text = cue.text.lower()
            if part == "eigen":
                ok = f"eigen-pair {j + 1}" in text
            elif kind == "move":
                before, after = names[segments[j - 1].kind], names[segments[j + 1].kind]
                ok = f"on to {ahead[segments[j + 1].kind]}" in text or (
                    before in text and after in text and text.index(before) < text.rindex(after))
            elif part in ("columns", "rows"):
                ok = names[kind] in text
            else:
                ok = "bicubic-x4" in text  # the outputs: the model
            assert ok, (seconds, part, kind, j, cue)
            kinds.add(kind)
    assert {"move", "edge", "flat", "texture", "eigen-inputs"} <= kinds
