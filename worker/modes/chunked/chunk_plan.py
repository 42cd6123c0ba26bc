"""The chunk plan: which frames of a source each chunk task encodes, decided from its packets alone
(no decode), so the job knows every chunk (its first frame, frame count and duration) before any
chunk task runs.

Nothing is cut ahead of the encodes. Each chunk task decodes its own range straight from the source
(host-cached on its worker): it seeks to a keyframe before the range and keeps exactly the range's
frames, trimmed at the midpoints between frames so no time is ever rounded onto the wrong frame
(encoder.chunk_encode_args). So a chunk may start on any frame: not only on keyframes, not only on
the segment grid, whatever the frame rate (23.976, 29.97, 59.94, variable) or GOP (closed, open,
scene cuts).

How many chunks: a few per encode consumer of the fleet (``chunks_per_consumer``), so every worker
has work until the end and the last wave is as full as the first; more on long sources, so no chunk
is over ``max_chunk_s`` (the count stays a multiple of the fleet's share); fewer on short ones, so
none is under ``min_chunk_s`` (below it the per-task cost outweighs the parallelism). All chunks
are equally long, to the frame. ``chunk_seconds`` fixes the length instead (tests, benches).

A source that cannot be planned this way gets a plan that says why (``per_rung``): chunking is a
way to encode, not a verdict on the source.
"""

from __future__ import annotations

import bisect
import heapq
import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from config.settings import Settings
from core.errors import InputError
from core.job_model import ChunkPlan
from worker.modes.chunked.packets import Packets

#: Times this close are the same instant (ffprobe prints microseconds).
EPSILON_S = 1e-6
#: How far (in packets) a frame may be shown from where it is decoded for the planning to put
#: the frames in order in compact memory (B-frames move a few; more costs a full sort).
REORDER_WINDOW = 64
#: A chunk's decode starts this far before the keyframe at or before its first frame: a demuxer
#: without an index (MPEG-TS) seeks by timestamps and may land a little late.
SEEK_MARGIN_S = 1.0


@dataclass(frozen=True)
class RangePlan:
    """The chunks (as the manifest records them), the source's frames in all, and its length from
    the first frame to the end of the last (the packets' word, whatever the header says).
    ``per_rung``: why the source cannot be chunked at all (the job is then encoded per rung)."""

    chunks: ChunkPlan
    frames: int
    span: float
    per_rung: str | None = None


def not_chunked(reason: str, frames: int = 0) -> RangePlan:
    """A plan that says the job must go per rung, and why."""
    chunks = ChunkPlan(
        split="range", seconds=0.0, starts=[0.0], frames=[frames], durations=[0.0], reason=reason
    )
    return RangePlan(chunks, frames, 0.0, per_rung=reason)


def chunk_count(span: float, consumers: int, settings: Settings) -> tuple[int, str]:
    """How many chunks for a source ``span`` seconds long on a fleet of ``consumers`` encode
    consumers, and why (the manifest keeps the why)."""
    if settings.chunk_seconds > 0:
        count = max(1, round(span / settings.chunk_seconds))
        return count, f"ENCODEQ_CHUNK_SECONDS={settings.chunk_seconds:g} asks for {count}"
    share = max(1, consumers) * max(1, settings.chunks_per_consumer)
    count = share * max(1, math.ceil(span / (share * settings.max_chunk_s)))
    why = f"{max(1, consumers)} encode consumer(s) x {settings.chunks_per_consumer} chunks each"
    if count > share:
        why += f", x{count // share} so none is over {settings.max_chunk_s:g}s"
    if span / count < settings.min_chunk_s:
        count = max(1, math.floor(span / settings.min_chunk_s))
        why += f"; fewer, {count}, so none is under {settings.min_chunk_s:g}s"
    return count, why


def plan_packets(
    packets: Packets, frame_rate: float, settings: Settings, consumers: int
) -> RangePlan:
    """The plan for a source with these packets (pure: the strategy reads them)."""
    n = packets.frames
    if n == 0:
        return not_chunked("the source has no video packets to plan chunks from")
    refused = _refused(packets)
    if refused is not None:
        return not_chunked(refused, n)
    frame = 1 / frame_rate if frame_rate > 0 else 1 / 25
    order, times = _presentation(packets)
    span = times[-1] + (packets.durations[order[-1]] or frame)
    if span > settings.max_duration_s:
        raise InputError(
            "too_long",
            f"its frames last {span:.0f}s, over the limit of {settings.max_duration_s:.0f}s",
        )
    count, why = chunk_count(span, consumers, settings)
    starts = _balanced_starts(times, span, count)
    first = packets.times[order[0]]
    keyframes = sorted(packets.times[d] - first for d in range(n) if packets.keyframe[d])
    ends = [*(times[s] for s in starts[1:]), span]
    chunks = ChunkPlan(
        split="range",
        seconds=round(span / len(starts), 3),
        starts=[round(times[s], 6) for s in starts],
        frames=[hi - lo for lo, hi in zip(starts, [*starts[1:], n], strict=True)],
        durations=[round(end - times[s], 6) for s, end in zip(starts, ends, strict=True)],
        reason=f"{len(starts)} chunks of {span / len(starts):.2f}s: {why}",
        # the source's own frame interval across each seam (1/fps for constant frame rate)
        seam_intervals=[round(times[s] - times[s - 1], 6) for s in starts[1:]],
        origin=round(first - packets.start, 6),
        bounds=[round((times[s - 1] + times[s]) / 2, 6) for s in starts[1:]],
        seeks=[_seek(keyframes, times[s]) for s in starts],
    )
    return RangePlan(chunks, n, round(span, 6))


def _refused(packets: Packets) -> str | None:
    """Why no chunk can be decoded by time from these packets (None: every one can)."""
    if not packets.timed:
        return "the source's packets carry no presentation times (no range can be found by time)"
    if not packets.keyframe[0]:
        return "the source does not start on a keyframe (a decoder drops what comes before it)"
    return None


def _balanced_starts(times: Sequence[float], span: float, count: int) -> list[int]:
    """The first frame of each of ``count`` chunks of equal length (frame numbers, from 0)."""
    starts = [0]
    for k in range(1, count):
        s = bisect.bisect_left(times, span * k / count - EPSILON_S)
        if starts[-1] < s < len(times):
            starts.append(s)
    return starts


def _seek(keyframes: list[float], start: float) -> float:
    """Where a chunk starting at ``start`` seeks (seconds from the first frame; 0: read from the
    beginning): a margin before the keyframe at or before it, from where every frame of the chunk
    decodes (an open GOP's leading frames belong to the chunk before)."""
    at = bisect.bisect_right(keyframes, start + EPSILON_S) - 1
    return round(max(0.0, keyframes[max(at, 0)] - SEEK_MARGIN_S), 6)


def _presentation(packets: Packets) -> tuple[array, array]:
    """Decode indices in presentation order, and the presentation times from the first frame."""
    times: Sequence[float] = packets.times
    order = _reordered(times) or array("l", sorted(range(packets.frames), key=times.__getitem__))
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
