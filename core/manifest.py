"""The job manifest: the durable state of a job, kept in the ``jobs`` bucket.

One writer per object, so concurrent workers never lose each other's updates without locks:
``<job>/manifest.json`` holds the job-level state (written by the uploader, probe, finalize and the
failure handler, which run one after another), and each rendition has two records of its own,
written only by the task encoding that rendition: ``<job>/renditions/<name>.json`` once it is
completed (write-once in effect: nothing but another completion ever writes it) and
``<job>/renditions/<name>.live.json`` while it is pending, encoding or failed. A late duplicate of
an encode (a redelivery after the rung was done) can only touch the live record, which the
completed one shadows, so it can never downgrade a finished rendition. Chunk records work the
same way. A cancellation is an object of its own too (``<job>/cancelled.json``, written only by
the canceller): whatever a running task saves afterwards, the job reads as cancelled.
``JobStore.load`` joins them. The documents themselves are defined in core/job_model.py.
"""

from __future__ import annotations

from core.job_model import (
    Cancellation,
    ChunkRecord,
    ErrorInfo,
    JobState,
    Manifest,
    PastError,
    Rendition,
    Requeues,
    now_iso,
)
from core.layout import (
    JOBS,
    cancellation_key,
    chunk_record_key,
    manifest_key,
    rendition_record_key,
    requeues_key,
)
from core.storage import Storage


class JobStore:
    """Reads and writes manifests (their keys are in core/layout.py)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    def save(self, manifest: Manifest) -> None:
        manifest.updated_at = now_iso()
        doc = manifest.model_dump(mode="json")
        self.storage.put_json(JOBS, manifest_key(manifest.job_id), doc)

    def load_job(self, job_id: str) -> Manifest | None:
        """The job-level document alone, as its writers last left it; ``cancelled`` once the job
        was cancelled (its own record), whatever a task wrote to the document since."""
        doc = self.storage.get_json(JOBS, manifest_key(job_id))
        if doc is None:
            return None
        manifest = Manifest.model_validate(doc)
        if manifest.state not in ("completed", "cancelled") and self.cancelled(job_id):
            manifest.state = "cancelled"
        return manifest

    def cancelled(self, job_id: str) -> Cancellation | None:
        doc = self.storage.get_json(JOBS, cancellation_key(job_id))
        return None if doc is None else Cancellation.model_validate(doc)

    def cancel(self, manifest: Manifest, by: str) -> Manifest:
        """Record the cancellation (first, in its own object: the truth), then the state."""
        self.storage.put_json(
            JOBS, cancellation_key(manifest.job_id), Cancellation(by=by).model_dump(mode="json")
        )
        manifest.state = "cancelled"
        self.save(manifest)
        return manifest

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
