"""The job manifest: the durable state of a job, kept in the ``jobs`` bucket.

One writer per object, so concurrent workers never lose each other's updates without locks:
``<job>/manifest.json`` holds the job-level state (written by the uploader, probe, finalize and the
failure handler, which run one after another), and each rendition has two records of its own,
written only by the task encoding that rendition: ``<job>/renditions/<name>.json`` once it is
completed (write-once in effect: nothing but another completion ever writes it) and
``<job>/renditions/<name>.live.json`` while it is pending, encoding or failed. A late duplicate of
an encode (a redelivery after the rung was done) can only touch the live record, which the
completed one shadows, so it can never downgrade a finished rendition. Chunk records work the
same way. ``JobStore.load`` joins them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from core.layout import JOBS, chunk_record_key, manifest_key, rendition_record_key, requeues_key
from core.storage import Storage

JobState = Literal["queued", "probing", "encoding", "completed", "failed"]
RenditionState = Literal["pending", "encoding", "completed", "failed"]
#: per-rung: one task per rung decodes the whole source; chunked: one task per chunk decodes it
#: once for every rung, then a join per rung.
EncodeMode = Literal["chunked", "per-rung"]


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


class SourceInfo(BaseModel):
    uri: str
    #: The uploader's file name, kept as data only: object keys never come from it.
    filename: str
    size_bytes: int
    #: Displayed size (rotation applied): what a viewer sees, and what the ladder is chosen from.
    width: int | None = None
    height: int | None = None
    duration: float | None = None
    coded_width: int | None = None
    coded_height: int | None = None
    rotation: int = 0
    has_audio: bool | None = None
    video_codec: str | None = None
    container: str | None = None
    frame_rate: float | None = None
    #: Video frames (packets) of the source, counted when it is split into chunks.
    frames: int | None = None


class SeamCheck(BaseModel):
    """The seam quality control of one joined rendition (worker/seams.py)."""

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
    """How the source was cut: stream copy at keyframes, or an accurate (lossless) split."""

    split: Literal["copy", "accurate"]
    seconds: int
    #: Start time of each chunk (seconds from the first frame); frames and duration of each.
    starts: list[float]
    frames: list[int]
    durations: list[float]
    #: Why the accurate split was taken, when it was.
    reason: str | None = None
    #: The source's own frame interval at each seam (what the joined rendition must show there;
    #: 1/fps for constant frame rate sources).
    seam_intervals: list[float] | None = None

    @property
    def count(self) -> int:
        return len(self.starts)


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
    #: went per rung because its source could not be split as planned).
    mode_reason: str | None = None
    chunks: ChunkPlan | None = None
    #: Errors of earlier failures that a replay reopened, oldest first.
    history: list[PastError] = Field(default_factory=list)
    #: The probe task that claimed the job (the first to find it queued): a second probe message
    #: (the janitor re-publishes one for a job that looks orphaned) finds it taken and does nothing.
    probe_task: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in ("completed", "failed")


class JobStore:
    """Reads and writes manifests (their keys are in core/layout.py)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def save(self, manifest: Manifest) -> None:
        manifest.updated_at = now_iso()
        doc = manifest.model_dump(mode="json")
        self.storage.put_json(JOBS, manifest_key(manifest.job_id), doc)

    def load_job(self, job_id: str) -> Manifest | None:
        """The job-level document alone, as its writers last left it."""
        doc = self.storage.get_json(JOBS, manifest_key(job_id))
        return None if doc is None else Manifest.model_validate(doc)

    def load(self, job_id: str) -> Manifest | None:
        """The job as a user sees it: the job document with each rendition's latest record."""
        manifest = self.load_job(job_id)
        if manifest is None:
            return None
        manifest.renditions = [
            self.load_rendition(job_id, r.name) or r for r in manifest.renditions
        ]
        return manifest

    def load_rendition(self, job_id: str, name: str) -> Rendition | None:
        """The completed record when there is one (it always wins), else the live one."""
        for completed in (True, False):
            doc = self.storage.get_json(JOBS, rendition_record_key(job_id, name, completed))
            if doc is not None:
                return Rendition.model_validate(doc)
        return None

    def save_rendition(self, job_id: str, rendition: Rendition) -> None:
        """A completed rendition goes to its own record; any other state to the live record, so
        progress or a failure written by a late duplicate never overwrites a completed rung."""
        rendition.updated_at = now_iso()
        key = rendition_record_key(job_id, rendition.name, rendition.state == "completed")
        self.storage.put_json(JOBS, key, rendition.model_dump(mode="json"))

    def load_chunk(self, job_id: str, index: int) -> ChunkRecord | None:
        """Like a rendition: the completed record wins over the live one."""
        for completed in (True, False):
            doc = self.storage.get_json(JOBS, chunk_record_key(job_id, index, completed))
            if doc is not None:
                return ChunkRecord.model_validate(doc)
        return None

    def save_chunk(self, job_id: str, record: ChunkRecord) -> None:
        """Like a rendition: a second offer of a straggler starting late cannot overwrite the
        completed record of the first."""
        record.updated_at = now_iso()
        key = chunk_record_key(job_id, record.index, record.state == "completed")
        self.storage.put_json(JOBS, key, record.model_dump(mode="json"))

    def set_state(self, job_id: str, state: JobState, error: ErrorInfo | None = None) -> Manifest:
        """Move the job to ``state``. A completed job is never failed afterwards (a late duplicate
        of an already finished task must not undo the result), and a failed job keeps its first
        error: a sibling that fails later (often *because* of the first failure) does not hide
        the cause."""
        manifest = self.load_job(job_id)
        if manifest is None:
            raise KeyError(job_id)
        if state == "failed" and manifest.state in ("completed", "failed"):
            return manifest
        manifest.state = state
        manifest.error = error
        self.save(manifest)
        return manifest

    def reopen(self, manifest: Manifest, state: JobState = "encoding") -> bool:
        """Put a failed job back to work (a replayed message is about to finish it): the error
        moves to ``history``; chunk and rendition records stay. False when it was not failed."""
        if manifest.state != "failed":
            return False
        if manifest.error is not None:
            past = PastError(**manifest.error.model_dump(), failed_at=manifest.updated_at)
            manifest.history.append(past)
        manifest.state, manifest.error = state, None
        self.save(manifest)
        return True

    def load_requeues(self, job_id: str) -> Requeues | None:
        doc = self.storage.get_json(JOBS, requeues_key(job_id))
        return None if doc is None else Requeues.model_validate(doc)

    def save_requeues(self, job_id: str, requeues: Requeues) -> None:
        self.storage.put_json(JOBS, requeues_key(job_id), requeues.model_dump(mode="json"))

    def job_ids(self) -> list[str]:
        return sorted(key.rstrip("/") for key in self.storage.list_keys(JOBS, recursive=False))

    def list(self) -> list[Manifest]:
        manifests = [m for m in (self.load(job_id) for job_id in self.job_ids()) if m is not None]
        return sorted(manifests, key=lambda m: m.created_at)
