"""What the system is doing right now, as one model fed by manifests, events and queue depths.

The live job model: ``encodeq watch``, ``encodeq upload --wait`` (and the demo) and the web page
all show it, kept current by ``core/live_feed.py``. The manifests are the truth and are read when a
view starts and now and then after; lifecycle events (best effort, transient) fill in what
manifests do not hold or hold late: progress, fps and speed of a running encode, and which worker
is doing what. Queue depths come from core/queue_depths.py; task runs, from ``task.*`` events,
are kept for the timeline by core/timeline.py.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from core.job_model import FINISHED, Manifest, now_iso
from core.queue_depths import QueueDepth
from core.timeline import Timeline

#: Samples of queue depth kept for the "over time" chart (one a second: five minutes).
QUEUE_HISTORY = 300
#: Finished jobs kept in view next to the running ones.
KEEP_FINISHED = 20


@dataclass
class RenditionView:
    name: str
    width: int = 0
    height: int = 0
    state: str = "pending"
    progress: float = 0.0
    worker: str | None = None
    fps: float | None = None
    speed: float | None = None


@dataclass
class ChunkView:
    """One chunk of a chunked-mode job: who encodes it, and whether it straggled."""

    index: int
    state: str = "pending"
    worker: str | None = None
    offers: int = 1
    straggler: bool = False


@dataclass
class JobView:
    job_id: str
    state: str = "queued"
    filename: str | None = None
    renditions: dict[str, RenditionView] = field(default_factory=dict)
    error_code: str | None = None
    error_message: str | None = None
    master_playlist: str | None = None
    created_at: str | None = None
    updated_at: str = field(default_factory=now_iso)
    #: Lifecycle events applied to this job (0: everything known came from the manifest).
    events: int = 0
    #: Chunked mode: the chunks seen so far, by index, and how many there are.
    chunks: dict[int, ChunkView] = field(default_factory=dict)
    chunk_count: int = 0

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def rendition(self, name: str) -> RenditionView:
        if name not in self.renditions:
            self.renditions[name] = RenditionView(name)
        return self.renditions[name]

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["renditions"] = [asdict(r) for r in self.renditions.values()]
        doc["chunks"] = [asdict(c) for _, c in sorted(self.chunks.items())]
        return doc


@dataclass
class WorkerView:
    name: str
    #: What it does now, e.g. ``encode 3f2a... 720p``; None when its last task ended.
    doing: str | None = None
    job_id: str | None = None
    rendition: str | None = None
    last_seen: str = field(default_factory=now_iso)
    tasks_done: int = 0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Monitor:
    """Jobs, renditions, workers and queue depths; thread-safe, JSON-ready snapshots."""

    def __init__(self, job_filter: str | Iterable[str] | None = None) -> None:
        #: Only this job (``encodeq watch JOB``) or these (``upload --wait``); None: every job.
        self.job_filter = _job_ids(job_filter)
        self.jobs: dict[str, JobView] = {}
        self.workers: dict[str, WorkerView] = {}
        self.queues: list[QueueDepth] = []
        self.queue_history: deque[dict[str, Any]] = deque(maxlen=QUEUE_HISTORY)
        self.events_seen = 0
        #: Recent task runs (``task.*`` events), for the dashboard's timeline.
        self.timeline = Timeline()
        self._lock = threading.RLock()

    def follows(self, job_id: str) -> bool:
        return self.job_filter is None or job_id in self.job_filter

    # --- inputs --------------------------------------------------------------------------------
    def load_manifest(self, manifest: Manifest) -> JobView | None:
        """Take the manifest's state as the truth; live fields (fps, speed) are kept."""
        if not self.follows(manifest.job_id):
            return None
        with self._lock:
            job = self.jobs.setdefault(manifest.job_id, JobView(manifest.job_id))
            job.state = manifest.state
            job.filename = manifest.source.filename
            job.created_at = manifest.created_at
            job.master_playlist = manifest.master_playlist
            job.error_code = manifest.error.code if manifest.error else None
            job.error_message = manifest.error.message if manifest.error else None
            job.updated_at = manifest.updated_at
            for r in manifest.renditions:
                view = job.rendition(r.name)
                view.width, view.height, view.state = r.width, r.height, r.state
                if r.worker:
                    view.worker = r.worker
                # Records are written every few seconds; a fresher event may be ahead of them.
                view.progress = 100.0 if r.state == "completed" else max(view.progress, r.progress)
                if r.state == "encoding" and r.worker:
                    self._busy(r.worker, job.job_id, r.name, "encode")
            self._trim()
            return job

    def apply(self, event: dict[str, Any]) -> JobView | None:
        """Apply one lifecycle event; returns the job it concerns (None if filtered out)."""
        job_id = event.get("job_id")
        kind = str(event.get("event", ""))
        if kind.startswith("task.") and (self.job_filter is None or job_id in self.job_filter):
            self.timeline.apply(event)  # a run; the job's own events say what it means for the job
            return self.job(job_id) if isinstance(job_id, str) else None
        if not isinstance(job_id, str) or not self.follows(job_id):
            return None
        with self._lock:
            self.events_seen += 1
            job = self.jobs.setdefault(job_id, JobView(job_id))
            job.events += 1
            job.updated_at = str(event.get("time") or now_iso())
            worker = event.get("worker") if isinstance(event.get("worker"), str) else None
            name = event.get("rendition") if isinstance(event.get("rendition"), str) else None
            if kind == "job.queued":
                job.filename = event.get("filename") or job.filename
                job.state = "queued" if not job.finished else job.state
            elif kind == "job.probing":
                job.state = "probing"
                if worker:
                    self._busy(worker, job_id, None, "probe")
            elif kind == "job.encoding":
                job.state = "encoding"
                for r in event.get("renditions") or []:
                    if isinstance(r, dict) and isinstance(r.get("name"), str):
                        view = job.rendition(r["name"])
                        view.width, view.height = r.get("width", 0), r.get("height", 0)
                self._idle_probe(job_id)
            elif kind == "job.completed":
                job.state, job.error_code, job.error_message = "completed", None, None
                job.master_playlist = event.get("master_playlist") or job.master_playlist
                for view in job.renditions.values():
                    view.state, view.progress = "completed", 100.0
                self._idle_probe(job_id)
            elif kind == "job.reopened":  # a replayed message put a failed job back to work
                job.state = str(event.get("state") or "encoding")
                job.error_code = job.error_message = None
            elif kind == "job.cancelled":
                job.state = "cancelled"
                self._idle_job(job_id, None)
            elif kind == "job.failed":
                if job.state not in ("completed", "cancelled"):
                    job.state = "failed"
                    job.error_code = event.get("code")
                    job.error_message = event.get("message")
                if name:
                    job.rendition(name).state = "failed"
                self._idle_job(job_id, name)
            elif kind.startswith("rendition.") and name:
                self._apply_rendition(job, kind, name, worker, event)
            elif kind.startswith("chunk.") and isinstance(event.get("chunk"), int):
                self._apply_chunk(job, kind, worker, event)
            self._trim()
            return job

    def _apply_rendition(
        self, job: JobView, kind: str, name: str, worker: str | None, event: dict[str, Any]
    ) -> None:
        view = job.rendition(name)
        if worker:
            view.worker = worker
        if job.state in ("queued", "probing"):
            job.state = "encoding"
        if kind == "rendition.started":
            view.state, view.progress, view.fps, view.speed = "encoding", 0.0, None, None
        elif kind == "rendition.progress":
            view.state = "encoding"
            view.progress = max(view.progress, float(event.get("progress") or 0.0))
            view.fps = _number(event.get("fps"))
            view.speed = _number(event.get("speed"))
        elif kind == "rendition.completed":
            view.state, view.progress = "completed", 100.0
        elif kind == "rendition.failed":
            view.state = "failed"
        if worker:
            if kind in ("rendition.started", "rendition.progress"):
                self._busy(worker, job.job_id, name, "encode")
            else:
                self._idle(worker, done=kind == "rendition.completed")

    def _apply_chunk(
        self, job: JobView, kind: str, worker: str | None, event: dict[str, Any]
    ) -> None:
        index = int(event["chunk"])
        view = job.chunks.setdefault(index, ChunkView(index))
        if isinstance(event.get("chunks"), int):
            job.chunk_count = event["chunks"]
        if job.state in ("queued", "probing"):
            job.state = "encoding"
        if kind == "chunk.started" and view.state == "completed":
            # A start announced late (its worker froze between recording the start and saying
            # so): the chunk's first finisher won for good, and this copy will be discarded.
            return
        if kind == "chunk.started":
            view.state, view.worker = "encoding", worker or view.worker
            view.offers = max(view.offers, int(event.get("offer") or 1))
            if worker:
                self._busy(worker, job.job_id, f"chunk {index}", "encode")
        elif kind == "chunk.completed":
            view.state, view.worker = "completed", worker or view.worker
            if worker:
                self._idle(worker, done=True)
        elif kind == "chunk.straggler":  # offered to a second worker; the first result wins
            view.straggler = True
        elif kind == "chunk.discarded" and worker:  # the other offer won
            self._idle(worker, done=False)

    def set_queues(self, depths: list[QueueDepth]) -> None:
        with self._lock:
            self.queues = depths
            sample = {"time": now_iso(), "t": time.time()}
            sample.update({d.name: d.messages for d in depths})
            self.queue_history.append(sample)

    # --- workers -------------------------------------------------------------------------------
    def _busy(self, worker: str, job_id: str, rendition: str | None, task: str) -> None:
        view = self.workers.setdefault(worker, WorkerView(worker))
        view.doing = f"{task} {job_id[:8]}" + (f" {rendition}" if rendition else "")
        view.job_id, view.rendition, view.last_seen = job_id, rendition, now_iso()

    def _idle(self, worker: str, done: bool) -> None:
        view = self.workers.setdefault(worker, WorkerView(worker))
        view.doing, view.job_id, view.rendition, view.last_seen = None, None, None, now_iso()
        view.tasks_done += int(done)

    def _idle_probe(self, job_id: str) -> None:
        for view in self.workers.values():
            if view.job_id == job_id and view.rendition is None:
                self._idle(view.name, done=True)

    def _idle_job(self, job_id: str, rendition: str | None) -> None:
        for view in list(self.workers.values()):
            if view.job_id == job_id and (rendition is None or view.rendition == rendition):
                self._idle(view.name, done=False)

    def _trim(self) -> None:
        """Keep every running job and the most recent finished ones."""
        finished = [j for j in self.jobs.values() if j.finished]
        if len(finished) > KEEP_FINISHED:
            finished.sort(key=lambda j: j.updated_at)
            for job in finished[: len(finished) - KEEP_FINISHED]:
                del self.jobs[job.job_id]

    # --- outputs -------------------------------------------------------------------------------
    def in_flight(self) -> list[str]:
        with self._lock:
            return [j.job_id for j in self.jobs.values() if not j.finished]

    def job(self, job_id: str) -> JobView | None:
        with self._lock:
            return self.jobs.get(job_id)

    def sorted_jobs(self) -> list[JobView]:
        """Running jobs first, then finished ones; newest first within each."""
        with self._lock:
            jobs = list(self.jobs.values())
        jobs.sort(key=lambda j: j.created_at or j.updated_at, reverse=True)
        jobs.sort(key=lambda j: j.finished)
        return jobs

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "time": now_iso(),
                "jobs": [j.as_json() for j in self.sorted_jobs()],
                "workers": self.workers_json(),
                "queues": [asdict(d) for d in self.queues],
                "events_seen": self.events_seen,
            }

    def workers_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [w.as_json() for w in sorted(self.workers.values(), key=_by_name)]

    def queues_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "current": [asdict(d) for d in self.queues],
                "history": list(self.queue_history),
            }


def _job_ids(job_filter: str | Iterable[str] | None) -> frozenset[str] | None:
    if job_filter is None:
        return None
    return frozenset([job_filter] if isinstance(job_filter, str) else job_filter)


def _by_name(worker: WorkerView) -> str:
    return worker.name


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
