"""The encoder: RGB frames piped into the ffmpeg binary of ``imageio-ffmpeg``, with an embedded subtitle track.

- MP4: H.264 (``libx264``, yuv420p, CRF 18; or ``lossless=True``: ``libx264rgb -qp 0``, RGB without loss, for
  tests and for frames that must keep their exact colours) plus a ``mov_text`` subtitle stream tagged ``eng``
  from a WebVTT file; ``+faststart`` so players start before the whole file has arrived.
- GIF (the name ends in ``.gif``): one 256-colour palette made by ffmpeg's ``palettegen`` from a sample of the
  frames, then ``paletteuse`` (no dithering) while the frames stream; GIF has no subtitle track.

Frames stream through a pipe (nothing but the current frame is held in memory); the file is written to
``NAME.part.EXT`` and renamed when ffmpeg has finished, so a killed run never leaves a truncated video under
the final name. :func:`probe` reads a file's streams back through the same binary (an ``ffprobe``-style summary).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

#: encoders a build must have: H.264 (lossy and lossless RGB), the MP4 subtitle codec, GIF
REQUIRED = ("libx264", "libx264rgb", "mov_text", "gif")


class EncoderError(ValueError):
    """No usable ffmpeg binary, or ffmpeg failed; the message is one line."""


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary (imageio-ffmpeg's, or ``IMAGEIO_FFMPEG_EXE``) after checking it runs and has
    the encoders of :data:`REQUIRED`; ``EncoderError`` (one line) otherwise."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise EncoderError("no video encoder: the package imageio-ffmpeg is missing "
                           "(pip install imageio-ffmpeg)") from None
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as err:
        raise EncoderError(f"no ffmpeg binary found ({str(err).splitlines()[0]})") from None
    missing = [name for name in REQUIRED if name not in _encoders(exe)]
    if missing:
        raise EncoderError(f"the ffmpeg at {exe} lacks the encoder(s) {', '.join(missing)}; reinstall "
                           f"imageio-ffmpeg or set IMAGEIO_FFMPEG_EXE to an ffmpeg built with them")
    return exe


@functools.lru_cache(maxsize=4)
def _encoders(exe: str) -> frozenset[str]:
    try:
        run = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise EncoderError(f"the ffmpeg binary {exe} does not run ({err.__class__.__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if run.returncode != 0:
        raise EncoderError(f"the ffmpeg binary {exe} does not run (exit status {run.returncode}: "
                           f"{_last_line(run.stderr)})")
    return frozenset(m.group(1) for m in re.finditer(r"^\s*[VAS][.A-Z]{5}\s+(\S+)", run.stdout, re.M))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def _raw_input(size: tuple[int, int], fps: float) -> list[str]:
    h, w = size
    return ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "pipe:0"]


def _pipe(cmd: list[str], frames: Iterable[np.ndarray], size: tuple[int, int]) -> int:
    """Run ffmpeg ``cmd`` feeding ``frames`` ((H, W, 3) uint8 each) on its stdin; returns the frame count."""
    count = 0
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        try:
            for frame in frames:
                if frame.shape != size + (3,) or frame.dtype != np.uint8:
                    raise ValueError(f"frame {count} is {frame.shape} {frame.dtype}, expected {size + (3,)} uint8")
                proc.stdin.write(np.ascontiguousarray(frame).tobytes())
                count += 1
            proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
        if status != 0:
            log.seek(0)
            raise EncoderError(f"ffmpeg failed (exit status {status}): "
                               f"{_last_line(log.read().decode('utf-8', 'replace'))}")
    return count


def write_mp4(out: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: float, vtt: str | None, *,
              lossless: bool = False, language: str = "eng") -> int:
    """Encode ``frames`` ((H, W, 3) uint8, H and W even) at ``fps`` into the MP4 ``out`` with the WebVTT text
    ``vtt`` as its subtitle track (``mov_text``, tagged ``language``, on by default). Returns the frame count."""
    exe = ffmpeg_exe()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.stem + ".part" + out.suffix)
    video = (["-c:v", "libx264rgb", "-qp", "0", "-preset", "veryfast", "-pix_fmt", "rgb24"] if lossless else
             ["-c:v", "libx264", "-crf", "18", "-preset", "veryfast", "-tune", "animation", "-pix_fmt", "yuv420p"])
    with _scratch(out, "subs") as tmp:
        cmd = [exe, "-hide_banner", "-loglevel", "error", "-y"] + _raw_input(size, fps)
        if vtt is not None:
            subs = tmp / "subtitles.vtt"
            subs.write_text(vtt, encoding="utf-8")
            cmd += ["-i", str(subs), "-map", "0:v:0", "-map", "1:s:0", "-c:s", "mov_text",
                    "-metadata:s:s:0", f"language={language}", "-disposition:s:0", "default"]
        cmd += video + ["-movflags", "+faststart", "-f", "mp4", str(part)]
        count = _finish(part, out, lambda: _pipe(cmd, frames, size))
    return count


def write_gif(out: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: float,
              palette_frames: list[np.ndarray]) -> int:
    """Encode ``frames`` into the looping GIF ``out`` with one palette made from ``palette_frames``."""
    exe = ffmpeg_exe()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.stem + ".part" + out.suffix)
    with _scratch(out, "palette") as tmp:
        palette = tmp / "palette.png"
        _pipe([exe, "-hide_banner", "-loglevel", "error", "-y"] + _raw_input(size, fps)
              + ["-vf", "palettegen=max_colors=256:stats_mode=full", "-update", "1", str(palette)],
              palette_frames, size)
        cmd = ([exe, "-hide_banner", "-loglevel", "error", "-y"] + _raw_input(size, fps)
               + ["-i", str(palette), "-lavfi", "[0:v][1:v]paletteuse=dither=none", "-loop", "0", "-f", "gif",
                  str(part)])
        count = _finish(part, out, lambda: _pipe(cmd, frames, size))
    return count


@contextlib.contextmanager
def _scratch(out: Path, what: str):
    """A folder for ffmpeg's side files beside ``out``, ``.NAME.WHAT``: a fixed name, so that what a killed run
    left there is cleared by the next one; removed when the encode ends."""
    folder = out.with_name(f".{out.name}.{what}")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finish(part: Path, out: Path, encode) -> int:
    """Run ``encode`` (which writes ``part``), then rename ``part`` to ``out``; on any failure or interruption
    the partial file is removed and ``out`` is left as it was."""
    try:
        count = encode()
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, out)
    return count


def probe(path) -> dict:
    """An ``ffprobe``-style summary of a media file read by the bundled ffmpeg:
    ``{"duration": seconds or None, "streams": [{"index", "type" ("video"/"audio"/"subtitle"), "codec",
    "language" (or None), "width", "height", "fps" (video only)}]}``."""
    run = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                         timeout=120)
    text = run.stderr
    if "Input #0" not in text:
        raise EncoderError(f"{path}: not a readable media file ({_last_line(text)})")
    duration = None
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", text)
    if m:
        duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    streams = []
    for m in re.finditer(r"Stream #0:(\d+)(?:\[[^\]]*\])?(?:\((\w+)\))?: (Video|Audio|Subtitle|Data): (\w+)(.*)",
                         text):
        index, lang, kind, codec, rest = m.groups()
        info = {"index": int(index), "type": kind.lower(), "codec": codec,
                "language": None if lang in (None, "und") else lang}
        if kind == "Video":
            size = re.search(r", (\d+)x(\d+)", rest)
            fps = re.search(r", ([\d.]+) fps", rest)
            info.update(width=int(size.group(1)) if size else None, height=int(size.group(2)) if size else None,
                        fps=float(fps.group(1)) if fps else None)
        streams.append(info)
    return {"duration": duration, "streams": streams}
