"""Cut a source into the chunks its plan (chunk_plan.py) gives, at frame numbers, never at times,
handing over each chunk the moment ffmpeg closes it, so chunks are uploaded and encoded while the
rest of the source is still being cut:

* copy: the segment muxer cuts the stream copy at the packets that start the chunks
  (``-segment_frames``; in a closed GOP the packet number is the frame number).
* accurate: the source is decoded once and re-encoded losslessly (x264 ``-qp 0`` without
  B-frames, so packet n is frame n) with a keyframe forced on each chunk's first frame by number
  (``-force_key_frames expr:`` on ``n``), and cut at the same numbers.

Why not times: ``-force_key_frames 32`` is rounded to the encoder's time base, so at 29.97 fps it
forced the keyframe on frame 959 (31.999 s) while the segment muxer, told to cut at 32 s, cut at
the first keyframe at or after 32 s: x264's next one, 250 frames later (1209 frames, not 960).

A split that still misses its plan (a decoder that drops a frame, packets that misled the plan)
falls back: copy to accurate from the first chunk it missed, accurate to ``SplitImpossible``, on
which the job is encoded per rung instead. Every split obeys the output cap.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from config.settings import Settings
from core.errors import EncodeError
from worker import process
from worker.encoder import GLOBAL_ARGS
from worker.modes.chunked.chunk_plan import SplitPlan
from worker.modes.chunked.packets import video_packets
from worker.probe import safe_input_args

CHUNK_PATTERN = "chunk_%05d.mp4"
#: ffmpeg appends a line here as it closes each chunk.
CHUNK_LIST = "chunks.csv"
#: How often ffmpeg reports progress during a split, i.e. how soon a closed chunk is noticed.
SPLIT_POLL_S = 0.1
#: The longest ``-force_key_frames`` expression we hand ffmpeg (Linux refuses a single argument
#: over 128 KiB); a plan needing more (thousands of chunks) is encoded per rung instead.
MAX_EXPRESSION_CHARS = 100_000


class SplitImpossible(Exception):
    """Neither split could cut the source as planned: encode the job per rung."""


def split(
    source: Path,
    out_dir: Path,
    split_plan: SplitPlan,
    settings: Settings,
    ready: Callable[[int, Path], None],
    fallback: Callable[[str], None],
) -> None:
    """Cut ``source`` as planned, calling ``ready(index, file)`` for each chunk as soon as it is
    closed and verified. A copy cut that misses the plan calls ``fallback(reason)``, then cuts the
    chunks from there on accurately (those before it were right, and stay handed over). Raises
    ``SplitImpossible`` when the accurate cut misses too, EncodeError when a limit stops ffmpeg
    (``output_too_large``, ``timeout``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start = 0
    if split_plan.chunks.split == "copy":
        try:
            _cut(_copy_args(source, out_dir, split_plan), out_dir, split_plan, settings, ready)
            return
        except _Missed as exc:
            start = exc.index
            fallback(f"the stream-copy split missed the plan: {exc}")
            for f in out_dir.iterdir():
                f.unlink()
    try:
        argv = _accurate_args(source, out_dir, split_plan)
        _cut(argv, out_dir, split_plan, settings, ready, start)
    except _Missed as exc:
        raise SplitImpossible(f"the accurate split missed the plan: {exc}") from None


class _Missed(Exception):
    """A split did not deliver chunk ``index`` as planned."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index


def _closed_chunks(listed: Path) -> list[str]:
    """The chunk files ffmpeg has closed so far (whole lines of its list only)."""
    if not listed.exists():
        return []
    text = listed.read_text()
    lines = text.splitlines(keepends=True)
    whole = [line for line in lines if line.endswith("\n")]
    return [Path(row[0]).name for row in csv.reader(whole) if row]


def _cut(
    argv: list[str],
    out_dir: Path,
    split_plan: SplitPlan,
    settings: Settings,
    ready: Callable[[int, Path], None],
    start: int = 0,
) -> None:
    """Run the split; hand over each chunk from ``start`` on as ffmpeg lists it (closed), once it
    holds its planned frames."""
    chunks = split_plan.chunks
    listed = out_dir / CHUNK_LIST
    handed = [start]

    def hand_over_closed(_progress: object = None) -> None:
        names = _closed_chunks(listed)
        while handed[0] < len(names):
            index = handed[0]
            written = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
            if written > settings.max_output_bytes:  # nothing past the cap is ever handed over
                raise EncodeError(
                    "output_too_large", f"the split wrote over {settings.max_output_bytes} bytes"
                )
            if index >= chunks.count or names[index] != CHUNK_PATTERN % index:
                raise _Missed(index, f"ffmpeg closed {names[index]}, not one of the plan's chunks")
            path = out_dir / names[index]
            frames = video_packets(path, settings, trusted=True).frames
            if frames != chunks.frames[index]:
                raise _Missed(
                    index, f"chunk {index} holds {frames} frames, not {chunks.frames[index]}"
                )
            ready(index, path)
            handed[0] += 1

    try:
        process.run(
            argv,
            timeout_s=settings.encode_time_limit_s,
            on_progress=hand_over_closed,
            watch_dir=out_dir,
            max_output_bytes=settings.max_output_bytes,
        )
    except process.ProcessFailed as exc:
        raise _Missed(handed[0], f"ffmpeg failed: {exc}") from None
    hand_over_closed()
    if handed[0] != chunks.count:
        raise _Missed(handed[0], f"ffmpeg closed {handed[0]} of {chunks.count} chunks")


def _segment_args(out_dir: Path, split_plan: SplitPlan) -> list[str]:
    """The segment muxer, cutting at frame numbers (a number past the last frame: no cut)."""
    frames = ",".join(map(str, split_plan.cut_frames)) or str(split_plan.frames + 1)
    muxer = "-f segment -segment_format mp4 -reset_timestamps 1 -segment_list_type csv"
    return [
        "-frames:v",
        str(split_plan.frames),
        *muxer.split(),
        "-segment_frames",
        frames,
        "-segment_list",
        str(out_dir / CHUNK_LIST),
        str(out_dir / CHUNK_PATTERN),
    ]


def _copy_args(source: Path, out_dir: Path, split_plan: SplitPlan) -> list[str]:
    """Stream copy, cut at the packets that start the chunks (in a closed GOP the packet number
    is the frame number). MP4 keeps the rotation so each chunk decodes exactly like the source."""
    copy = ["-map", "0:v:0", "-c", "copy"]
    return [*_split_head(source), *copy, *_segment_args(out_dir, split_plan)]


def keyframe_expression(frames: list[int]) -> str:
    """An ffmpeg expression true on exactly these frame numbers (sorted): a binary search, so
    each frame costs a few comparisons and the nesting stays shallow (ffmpeg's parser refuses
    long flat sums)."""
    if len(frames) == 1:
        return f"eq(n,{frames[0]})"
    middle = len(frames) // 2
    below, above = frames[:middle], frames[middle:]
    return f"if(lt(n,{above[0]}),{keyframe_expression(below)},{keyframe_expression(above)})"


def _accurate_args(source: Path, out_dir: Path, split_plan: SplitPlan) -> list[str]:
    """Decode once, re-encode losslessly with a keyframe on every chunk's first frame (by frame
    number: no time is rounded anywhere), split there. Timestamps pass through untouched, in the
    source's own time base."""
    keyframes: list[str] = []
    if split_plan.cut_frames:
        expression = "expr:" + keyframe_expression(split_plan.cut_frames)
        if len(expression) > MAX_EXPRESSION_CHARS:
            raise SplitImpossible(
                f"{len(split_plan.cut_frames) + 1} chunks are too many to force "
                "keyframes for in one ffmpeg"
            )
        keyframes = ["-force_key_frames", expression]
    lossless = "-map 0:v:0 -fps_mode passthrough -enc_time_base -1 -c:v libx264 -preset ultrafast"
    options = [*lossless.split(), "-qp", "0", "-bf", "0", *keyframes]
    return [*_split_head(source), *options, *_segment_args(out_dir, split_plan)]


def _split_head(source: Path) -> list[str]:
    """ffmpeg reporting progress often (how soon a closed chunk is noticed), reading the source."""
    progress = ["-progress", "pipe:1", "-stats_period", str(SPLIT_POLL_S)]
    return ["ffmpeg", *GLOBAL_ARGS, *progress, *safe_input_args(), "-i", str(source)]
