"""Subtitle cues and their text formats: WebVTT (muxed into the MP4 as ``mov_text``) and SubRip (.srt).

A cue is (start, end, text) in seconds. A video's cues are contiguous: each starts where the previous ended,
the first at 0 and the last at the video's duration, so the subtitles cover the whole video without overlaps.
Times are written in milliseconds, rounded from the frame boundaries they come from.
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

#: characters per subtitle line (a common limit for readable subtitles)
LINE = 64


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def check(cues: list[Cue], duration: float) -> None:
    """``ValueError`` unless ``cues`` are non-empty, contiguous and cover [0, ``duration``] (to the millisecond)."""
    if not cues:
        raise ValueError("no subtitle cues")
    ms = [(round(c.start * 1000), round(c.end * 1000)) for c in cues]
    if ms[0][0] != 0 or ms[-1][1] != round(duration * 1000):
        raise ValueError(f"cues span {ms[0][0]}..{ms[-1][1]} ms, the video 0..{round(duration * 1000)} ms")
    for (a0, a1), (b0, _) in zip(ms, ms[1:]):
        if a1 != b0:
            raise ValueError(f"cues are not contiguous at {a1} / {b0} ms")
    if any(b <= a for a, b in ms):
        raise ValueError("a cue has no duration")


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def wrap(text: str) -> str:
    """The cue text broken into lines of at most :data:`LINE` characters (explicit line breaks are kept)."""
    return "\n".join(line for part in text.split("\n") for line in textwrap.wrap(part, LINE))


def webvtt(cues: list[Cue]) -> str:
    """WebVTT text of ``cues`` (the text may not contain "-->" or blank lines; both are removed)."""
    blocks = ["WEBVTT\n"]
    for c in cues:
        body = wrap(c.text.replace("-->", "→"))
        blocks.append(f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{body}\n")
    return "\n".join(blocks)


def srt(cues: list[Cue]) -> str:
    """SubRip text of ``cues``."""
    return "\n".join(f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{wrap(c.text.replace('-->', '→'))}\n"
                     for i, c in enumerate(cues, 1))


def write(path, cues: list[Cue]) -> Path:
    """Write ``cues`` to ``path`` as SubRip when it ends in .srt, else as WebVTT."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(srt(cues) if path.suffix.lower() == ".srt" else webvtt(cues), encoding="utf-8")
    return path
