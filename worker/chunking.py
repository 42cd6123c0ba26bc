"""Cut a source into chunks for chunk-parallel encoding: at keyframes by stream copy, or accurately.

``plan`` decides the cuts from the source's packets alone (no decode), so the job knows every chunk
(its first frame, frame count and duration) before the first one is cut; ``split`` then cuts them
and hands each over the moment ffmpeg closes it, so chunks are uploaded and encoded while the rest
of the source is still being cut.

Everything is counted in frames. A chunk starts on the first frame shown at or after a point of the
HLS segment grid (a multiple of ``segment_seconds`` from the first frame), so the keyframes each
chunk's encode forces on the grid relative to its own first frame fall where a whole-source encode
would put them (within a frame), and every rung cuts its segments at the same frames. Both splits
cut at frame numbers, never at times, so a chunk holds exactly the frames the plan gave it:

* copy: when every such first frame is a keyframe that opens a closed GOP (nothing shown before it
  is decoded after it), the segment muxer cuts the stream copy at that packet (``-segment_frames``).
* accurate: otherwise the source is decoded once and re-encoded losslessly (x264 ``-qp 0`` without
  B-frames, so packet n is frame n) with a keyframe forced on each chunk's first frame by number
  (``-force_key_frames expr:`` on ``n``), and cut at the same numbers.

Why not times: ``-force_key_frames 32`` is rounded to the encoder's time base, so at 29.97 fps it
forced the keyframe on frame 959 (31.999 s) while the segment muxer, told to cut at 32 s, cut at
the first keyframe at or after 32 s: x264's next one, 250 frames later (1209 frames, not 960).

A split that still misses its plan (a decoder that drops a frame, packets that misled the plan)
falls back: copy to accurate from the first chunk it missed, accurate to ``SplitImpossible``, on
which the caller encodes the job per rung instead. Every split obeys the output cap.
"""

from __future__ import annotations

import bisect
import csv
import heapq
import itertools
import math
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from config.settings import Settings
from core.errors import EncodeError, InputError
from core.manifest import ChunkPlan
from worker import process
from worker.encoder import GLOBAL_ARGS
from worker.probe import MAX_FRAME_RATE, safe_input_args

CHUNK_PATTERN = "chunk_%05d.mp4"
#: ffmpeg appends a line here as it closes each chunk.
CHUNK_LIST = "chunks.csv"
#: How often ffmpeg reports progress during a split, i.e. how soon a closed chunk is noticed.
SPLIT_POLL_S = 0.1
#: Times this close are the same instant (ffprobe prints microseconds).
EPSILON_S = 1e-6
#: The longest ``-force_key_frames`` expression we hand ffmpeg (Linux refuses a single argument
#: over 128 KiB); a plan needing more (thousands of chunks) is encoded per rung instead.
MAX_EXPRESSION_CHARS = 100_000
#: How far (in packets) a frame may be shown from where it is decoded for the planning to put
#: the frames in order in compact memory (B-frames move a few; more costs a full sort).
REORDER_WINDOW = 64


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
    #: frames of the output, and a stream copy would show them, so they refuse the copy split.
    discarded: int = 0

    @property
    def frames(self) -> int:
        return len(self.times)


def chunk_length(settings: Settings) -> int:
    """The target chunk length rounded up to whole segments (chunk seams are segment seams)."""
    seg = settings.segment_seconds
    return max(seg, math.ceil(settings.chunk_seconds / seg) * seg)


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
    listing = "-select_streams v:0 -show_entries packet=pts_time,dts_time,duration_time,flags"
    safe = [] if trusted else safe_input_args()
    argv = ["ffprobe", "-v", "error", *safe, *listing.split(), "-of", "compact=p=0", str(path)]
    times, durations, keyframe = array("d"), array("d"), bytearray()
    untimed, discarded = [0], [0]

    def on_line(line: str) -> None:
        fields = dict(field.partition("=")[::2] for field in line.rstrip("\r\n").split("|"))
        if "flags" not in fields:
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
    return Packets(times, keyframe, durations, timed=untimed[0] == 0, discarded=discarded[0])


@dataclass(frozen=True)
class SplitPlan:
    """The chunks, the frame number (presentation order, from 0) at which each chunk after the
    first starts, the source's frames in all, and its length from the first frame to the end of
    the last (the packets' word, whatever the header says). ``per_rung``: why the source cannot
    be chunked at all (the job is then encoded per rung)."""

    chunks: ChunkPlan
    cut_frames: list[int]
    frames: int
    span: float
    per_rung: str | None = None


def not_chunked(reason: str, settings: Settings, frames: int = 0) -> SplitPlan:
    """A plan that says the job must go per rung, and why."""
    chunks = ChunkPlan(
        split="accurate",
        seconds=chunk_length(settings),
        starts=[0.0],
        frames=[frames],
        durations=[0.0],
        reason=reason,
    )
    return SplitPlan(chunks, [], frames, 0.0, per_rung=reason)


class SplitImpossible(Exception):
    """Neither split could cut the source as planned: encode the job per rung."""


def plan(source: Path, frame_rate: float, settings: Settings) -> SplitPlan:
    """Where to cut ``source``, from its packets: each chunk's start, frames and duration."""
    return plan_packets(
        video_packets(source, settings, limit=max_packets(settings)), frame_rate, settings
    )


def _presentation(packets: Packets, frame: float) -> tuple[array, array]:
    """Decode indices in presentation order, and the presentation times from the first frame."""
    n = packets.frames
    times: Sequence[float] = packets.times
    if any(math.isnan(t) for t in times):  # no time at all on some packet: trust the order
        times = array("d", (i * frame for i in range(n)))
    order = _reordered(times) or array("l", sorted(range(n), key=times.__getitem__))
    first = times[order[0]]
    return order, array("d", (times[d] - first for d in order))


def _reordered(times: Sequence[float]) -> array | None:
    """Decode indices in presentation order when no frame is shown more than REORDER_WINDOW
    packets away from where it is decoded (B-frames: a few), in compact memory; None otherwise
    (then a full sort, about 60 bytes a packet while it runs)."""
    order, waiting, last = array("l"), [], -math.inf
    for d, t in enumerate(times):
        if len(waiting) < REORDER_WINDOW:
            heapq.heappush(waiting, (t, d))
            continue
        shown, index = heapq.heappushpop(waiting, (t, d))
        if shown < last:
            return None
        order.append(index)
        last = shown
    for shown, index in sorted(waiting):
        if shown < last:
            return None
        order.append(index)
        last = shown
    return order


def _clean_keyframes(packets: Packets, order: array) -> set[int]:
    """Frames (presentation index) a stream copy can start a chunk on: keyframes where exactly the
    frames shown before them are decoded before them (a closed GOP starts there), so the copy cut
    at that packet holds the frames the plan counts."""
    position = array("l", [0]) * len(order)
    for p, d in enumerate(order):
        position[d] = p
    clean, highest = set(), -1
    for d, p in enumerate(position):
        if packets.keyframe[d] and p == d and highest < p:
            clean.add(p)
        highest = max(highest, p)
    return clean


def plan_packets(packets: Packets, frame_rate: float, settings: Settings) -> SplitPlan:
    """The plan for a source with these packets (pure: ``plan`` reads them)."""
    n = packets.frames
    if n == 0:
        return not_chunked("the source has no video packets to split", settings)
    frame = 1 / frame_rate if frame_rate > 0 else 1 / 25
    order, times = _presentation(packets, frame)
    span = times[-1] + (packets.durations[order[-1]] or frame)
    if span > settings.max_duration_s:
        raise InputError(
            "too_long",
            f"its frames last {span:.0f}s, over the limit of {settings.max_duration_s:.0f}s",
        )
    seg, length = settings.segment_seconds, chunk_length(settings)

    def first_at(t: float) -> int:
        return bisect.bisect_left(times, t - EPSILON_S)

    def usable(s: int, previous: int) -> bool:
        """A chunk may start at frame ``s``: after the previous start, leaving a segment after."""
        return previous < s < n and span - times[s] >= seg

    reason = _copy_refused(packets)
    if reason is None and order[0] != 0:
        reason = "the first frame shown is not the first decoded (the source opens on an open GOP)"
    starts = [0]
    if reason is None:
        clean = _clean_keyframes(packets, order)
        target = float(length)
        while span - target >= seg:  # each chunk about ``length`` long, a short tail joins the last
            found: list[tuple[float, int]] = []
            opened = False
            for m in range(
                max(1, math.ceil((target - length / 2) / seg)),
                math.floor((target + length / 2) / seg) + 1,
            ):
                s = first_at(m * seg)
                if usable(s, starts[-1]):
                    if s in clean:
                        found.append((m * seg, s))
                    opened = opened or bool(packets.keyframe[order[s]])
            if not found:
                reason = (
                    f"the keyframes on the {seg}s segment grid near {target:g}s open their GOPs "
                    "(frames shown before them are decoded after them)"
                    if opened
                    else f"no keyframe starts the {seg}s segment grid near {target:g}s"
                )
                break
            grid, s = min(found, key=lambda f: abs(f[0] - target))
            starts.append(s)
            target = grid + length
    if reason is not None:  # accurate: a chunk on each multiple of the chunk length
        starts = [0]
        for k in itertools.count(1):
            if span - k * length < seg:
                break
            s = first_at(k * length)
            if usable(s, starts[-1]):
                starts.append(s)
    bounds = [*starts, n]
    ends = [*(times[s] for s in starts[1:]), span]
    chunks = ChunkPlan(
        split="copy" if reason is None else "accurate",
        seconds=length,
        starts=[round(times[s], 6) for s in starts],
        frames=[hi - lo for lo, hi in itertools.pairwise(bounds)],
        durations=[round(end - times[s], 6) for s, end in zip(starts, ends, strict=True)],
        reason=reason,
        # the source's own frame interval across each seam (1/fps for constant frame rate)
        seam_intervals=[round(times[s] - times[s - 1], 6) for s in starts[1:]],
    )
    return SplitPlan(chunks, starts[1:], n, round(span, 6))


def _copy_refused(packets: Packets) -> str | None:
    """Why no stream copy can be planned from these packets at all (None: one may be)."""
    if not packets.timed:
        return "the source's packets carry no presentation times (a stream copy cannot be planned)"
    if not packets.keyframe[0]:
        return "the source does not start on a keyframe"
    if packets.discarded:
        return f"an edit list trims {packets.discarded} frames (a stream copy would show them)"
    return None


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
