"""A file's video packets, read without decoding (demux only): what the chunk plan is made from
and how every chunk is checked against it.

Kept in compact arrays (about 17 bytes a packet), since a source within the limits may hold
hours of frames at a high frame rate; past the most packets such a source can hold, reading stops
and the file is refused.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from core.errors import InputError
from worker import process
from worker.probe import MAX_FRAME_RATE, safe_input_args


@dataclass(frozen=True)
class Packets:
    """A file's video packets in decode order: time (s; the presentation time, else the decode
    time, else NaN), keyframe flag, duration (s; 0 when unknown). ``timed``: every packet had a
    presentation time (a stream copy can only be planned from those)."""

    times: Sequence[float]
    keyframe: Sequence[int]
    durations: Sequence[float]
    timed: bool = True
    #: Packets an edit list marks to be discarded (decoded for reference, never shown): not
    #: frames of the output.
    discarded: int = 0
    #: The file's start time (s): ffmpeg's input timeline counts from it.
    start: float = 0.0

    @property
    def frames(self) -> int:
        return len(self.times)


def max_packets(settings: Settings) -> int:
    """The most video packets a source within the limits can hold."""
    return math.ceil(settings.max_duration_s * MAX_FRAME_RATE)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "", "N/A") else None
    except ValueError:
        return None


def video_packets(
    path: Path, settings: Settings, trusted: bool = False, limit: int | None = None
) -> Packets:
    """Read the video packets without decoding (cheap: demux only), line by line, keeping compact
    arrays only (about 17 bytes a packet). Past ``limit`` packets ffprobe is stopped and the file
    refused (``too_long``): its frames are over what the duration and frame-rate limits allow,
    whatever its header says."""
    listing = (
        "-select_streams v:0 -show_entries packet=pts_time,dts_time,duration_time,flags"
        ":format=start_time"
    )
    safe = [] if trusted else safe_input_args()
    argv = ["ffprobe", "-v", "error", *safe, *listing.split(), "-of", "compact=p=0", str(path)]
    times, durations, keyframe = array("d"), array("d"), bytearray()
    untimed, discarded, start = [0], [0], [0.0]

    def on_line(line: str) -> None:
        fields = dict(field.partition("=")[::2] for field in line.rstrip("\r\n").split("|"))
        if "flags" not in fields:
            start[0] = _number(fields.get("start_time")) or start[0]
            return
        if limit is not None and len(times) >= limit:
            raise InputError(
                "too_long",
                f"the video holds more than {limit} frames: over {settings.max_duration_s:.0f}s "
                f"at up to {MAX_FRAME_RATE} fps",
            )
        if "D" in fields["flags"]:
            discarded[0] += 1
            return
        pts = _number(fields.get("pts_time"))
        if pts is None:
            untimed[0] += 1
            pts = _number(fields.get("dts_time"))
        times.append(math.nan if pts is None else pts)
        keyframe.append(1 if "K" in fields["flags"] else 0)
        durations.append(_number(fields.get("duration_time")) or 0.0)

    # the source's listing may be long (hours at a high frame rate): the task's own time limit
    timeout = settings.encode_time_limit_s if limit is not None else settings.probe_timeout_s * 4
    process.run(argv, timeout_s=timeout, on_line=on_line)
    timed = untimed[0] == 0
    return Packets(times, keyframe, durations, timed, discarded[0], start[0])
