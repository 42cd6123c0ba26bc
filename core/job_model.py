"""The job model: every document a job is made of, defined once and stored as it is.

A job is its manifest (``Manifest``: the upload and what the probe found in it, the mode, the chunk
plan, the rungs, the outcome) plus one record per rendition (``Rendition``) and per chunk
(``ChunkRecord``). core/manifest.py reads and writes them (``JobStore``); core/layout.py names their
keys.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

JobState = Literal["queued", "probing", "encoding", "completed", "failed", "cancelled"]
RenditionState = Literal["pending", "encoding", "completed", "failed"]
#: per-rung: one task per rung decodes the whole source; chunked: one task per chunk decodes it
#: once for every rung, then a join per rung.
EncodeMode = Literal["chunked", "per-rung"]
#: States a job never leaves on its own (a replay can reopen a failed one).
FINISHED: tuple[JobState, ...] = ("completed", "failed", "cancelled")
#: The lane of a job's encodes (worker/window.py): high jobs overtake normal ones.
Priority = Literal["normal", "high"]


#: A job id is ours: ``uuid4().hex``, made by the uploader. Anything else named as one (a forged
#: message, a URL path) is refused before it can become part of a key.
JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and JOB_ID.match(value) is not None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class ErrorInfo(BaseModel):
    code: str
    message: str


class PastError(ErrorInfo):
    """An error the job had before a replay reopened it (kept, so the history stays visible)."""

    failed_at: str
    reopened_at: str = Field(default_factory=now_iso)


class ProbeResult(BaseModel):
    """What the probe (worker/probe.py) found in the source, under the limits: stored in the
    manifest as it is and read back by every later task, in the form the encoder takes."""

    model_config = ConfigDict(frozen=True)

    container: str
    #: Seconds: the longest of the container's and its streams' durations (a chunked job whose
    #: packets run longer records their span instead).
    duration: float
    coded_width: int
    coded_height: int
    #: Displayed size (rotation applied): what a viewer sees, and what the ladder is chosen from.
    width: int
    height: int
    rotation: int = 0
    frame_rate: float
    video_codec: str
    has_audio: bool
    #: How far audio and video disagree, in start time or length (s): chunked mode encodes them
    #: apart and lays them side by side, so it cannot keep an offset between them.
    av_mismatch_s: float = 0.0


#: The probe's fields in a manifest not probed yet (None, or the field's default).
UNPROBED: dict[str, object] = {
    name: None if field.is_required() else field.default
    for name, field in ProbeResult.model_fields.items()
}


class SourceInfo(BaseModel):
    """The upload, and once probed what is in it.

    ``probe`` is stored flat beside the upload's own fields (``source.width``, ``source.duration``:
    the manifest's JSON has always read that way, and its readers rely on it), and read back into
    the same ``ProbeResult``.
    """

    uri: str
    #: The uploader's file name, kept as data only: object keys never come from it.
    filename: str
    size_bytes: int
    probe: ProbeResult | None = None
    #: Video frames (packets) of the source, counted when chunks are planned from them.
    frames: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_probe(cls, data: Any) -> Any:
        """Collect the flat probe fields of a stored document into ``probe``."""
        if not isinstance(data, dict) or "probe" in data:
            return data
        data = dict(data)
        found = {name: data.pop(name) for name in UNPROBED if name in data}
        required = [n for n, f in ProbeResult.model_fields.items() if f.is_required()]
        if all(found.get(name) is not None for name in required):
            data["probe"] = found
        return data

    @model_serializer(mode="wrap")
    def _flatten_probe(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        doc = handler(self)
        probed = doc.pop("probe", None)
        doc.update(probed if probed is not None else UNPROBED)
        return doc

    @property
    def width(self) -> int | None:
        """Displayed width, once probed."""
        return self.probe.width if self.probe else None

    @property
    def height(self) -> int | None:
        """Displayed height, once probed."""
        return self.probe.height if self.probe else None

    @property
    def duration(self) -> float | None:
        """Seconds, once probed."""
        return self.probe.duration if self.probe else None


class SeamCheck(BaseModel):
    """The seam quality control of one joined rendition (worker/modes/chunked/seams.py)."""

    passed: bool
    frames: int
    expected_frames: int
    #: Chunk boundaries checked, and the largest deviation of a frame interval there from the
    #: nominal frame duration (seconds).
    seams: int
    max_seam_error_s: float
    video_duration: float
    audio_duration: float | None = None
    problems: list[str] = Field(default_factory=list)


class ChunkPlan(BaseModel):
    """Which frames each chunk encodes (worker/modes/chunked/chunk_plan.py), and why so many.

    ``range``: each chunk task decodes its own frames from the source (seek, then trim). Jobs of
    earlier versions were cut ahead (``copy``: stream copy at keyframes; ``accurate``: a lossless
    re-encode); their chunks are decoded by range too when a replay encodes them again.
    """

    split: Literal["range", "copy", "accurate"]
    #: The chunks' length (s), planned from the source and the fleet.
    seconds: float
    #: Start time of each chunk (seconds from the first frame); frames and duration of each.
    starts: list[float]
    frames: list[int]
    durations: list[float]
    #: Why the plan has these chunks (or why the source went per rung).
    reason: str | None = None
    #: The source's own frame interval at each seam (what the joined rendition must show there;
    #: 1/fps for constant frame rate sources).
    seam_intervals: list[float] | None = None
    #: Where the first frame sits on ffmpeg's input timeline (its time after the file's start).
    origin: float = 0.0
    #: Between chunk k and k+1: midway from the last frame of one to the first of the next
    #: (seconds from the first frame), so a trim there keeps exactly the plan's frames.
    bounds: list[float] | None = None
    #: Where each chunk's decode starts (seconds from the first frame; 0: the beginning).
    seeks: list[float] | None = None
    #: Rungs the chunks do not encode: each is encoded from the whole source by one task of its
    #: own (the lowest: it plays from its first segment, seconds after the upload).
    whole_rungs: list[str] = Field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.starts)

    def decode_range(self, index: int) -> tuple[float, float, float | None]:
        """Where chunk ``index``'s decode seeks, and the times its frames lie between (seconds
        from the first frame; no end for the last chunk). A plan without bounds (cut ahead by an
        earlier version) has them midway across each seam, and decodes from the beginning."""
        bounds = self.bounds
        if bounds is None:
            intervals = self.seam_intervals or [0.0] * (self.count - 1)
            bounds = [t - gap / 2 for t, gap in zip(self.starts[1:], intervals, strict=True)]
        seek = self.seeks[index] if self.seeks else 0.0
        start = bounds[index - 1] if index else 0.0
        end = bounds[index] if index < self.count - 1 else None
        return seek, start, end


class ChunkRecord(BaseModel):
    """One chunk's encode (``jobs/<job>/chunks/<index>.json``), or the job's audio (``audio``)."""

    index: int
    state: RenditionState = "pending"
    worker: str | None = None
    task_id: str | None = None
    started_at: str | None = None
    #: Wall-clock seconds of the task that won (fetch, encode, checks, uploads), of its ffmpeg
    #: alone (the rest is the per-chunk overhead), and how many workers were given the chunk.
    seconds: float | None = None
    encode_seconds: float | None = None
    offers: int = 1
    frames: int | None = None
    duration: float | None = None
    updated_at: str = Field(default_factory=now_iso)


class Rendition(BaseModel):
    name: str
    width: int
    height: int
    video_kbps: int
    state: RenditionState = "pending"
    playlist: str | None = None
    #: The playlist once the rung plays while its job still encodes: a whole-source encode's
    #: growing EVENT playlist (``live.m3u8``; the finished one, ``playlist``, has a key of its
    #: own; finalize removes the live one), or a chunked join's.
    live_playlist: str | None = None
    worker: str | None = None
    progress: float = 0.0
    bandwidth: int | None = None
    average_bandwidth: int | None = None
    codecs: str | None = None
    duration: float | None = None
    segments: int | None = None
    size_bytes: int | None = None
    task_id: str | None = None
    updated_at: str = Field(default_factory=now_iso)
    #: What produced it (codec, preset, rate control, GOP, mode, chunk count and length).
    encoder: dict[str, object] | None = None
    #: Chunked mode only: the seam check of the joined rendition.
    seam_check: SeamCheck | None = None


class Requeues(BaseModel):
    """How often, and when last, the janitor re-published the probe of a job that stayed queued
    (``<job>/requeues.json``: its own object, so the janitor never writes the job document and
    cannot undo a probe's claim with a stale copy)."""

    count: int = 0
    at: str = Field(default_factory=now_iso)


class Cancellation(BaseModel):
    """``<job>/cancelled.json``: written once, by ``encodeq cancel`` (or the dashboard), and by
    nothing else, so no task that saves the job document afterwards can undo it."""

    at: str = Field(default_factory=now_iso)
    #: Who asked: ``cli`` or ``web``.
    by: str = "cli"


class Manifest(BaseModel):
    job_id: str
    state: JobState = "queued"
    created_at: str = Field(default_factory=now_iso)
    updated_at: str = Field(default_factory=now_iso)
    source: SourceInfo
    renditions: list[Rendition] = Field(default_factory=list)
    master_playlist: str | None = None
    poster: str | None = None
    error: ErrorInfo | None = None
    #: Requested at upload (None: chosen by the probe from the source's length), then resolved.
    mode: EncodeMode | None = None
    #: Why the job is in its mode when that is not what was asked or chosen (a chunked job that
    #: went per rung because its source could not be chunked).
    mode_reason: str | None = None
    chunks: ChunkPlan | None = None
    #: Errors of earlier failures that a replay reopened, oldest first.
    history: list[PastError] = Field(default_factory=list)
    #: The probe task that claimed the job (the first to find it queued): a second probe message
    #: (the janitor re-publishes one for a job that looks orphaned) finds it taken and does nothing.
    probe_task: str | None = None
    priority: Priority = "normal"
    #: How many of its encode tasks wait or run at once (worker/window.py), fixed at fan-out;
    #: None: every task was published at once.
    window: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED
