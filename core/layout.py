"""The object layout: every bucket and every key encodeq writes, in one place.

Five logical buckets, each named ``<bucket_prefix><name>`` and created private on first use::

    uploads/     <job>/source.<ext>                   the upload, as the user sent it
                 <job>/chunks/<rung>/<index>.ts       chunked mode: each rung of each chunk
                 <job>/chunks/audio.ts                chunked mode: the job's audio, encoded once
    jobs/        <job>/manifest.json                  the job (core/manifest.py)
                 <job>/renditions/<rung>[.live].json  one record per rung, one writer each
                 <job>/chunks/<index|audio>[.live].json
                 <job>/requeues.json                  what the janitor re-published, and when
    renditions/  <job>/<rung>/index.m3u8, seg_*.ts    the HLS output
                 <job>/master.m3u8, <job>/poster.jpg
    failures/    <sha256(task id)>.json               why a task died (core/failures.py)
    audit/       <UTC time>-<random>.json             every replay, purge and import

Keys start with the job id (a UUID the uploader chose, checked by ``is_job_id`` wherever a message
names one), so no message can steer a write into another job's prefix. Nothing else builds a key.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from pathlib import Path

UPLOADS = "uploads"
JOBS = "jobs"
RENDITIONS = "renditions"
FAILURES = "failures"
#: The DLQ inspector's audit trail (replays, purges, imports): written by operators' tools (the
#: ``encodeq dlq`` CLI, the dashboard), never by workers, so nothing a message says can forge it.
AUDIT = "audit"
BUCKETS = (UPLOADS, JOBS, RENDITIONS, FAILURES, AUDIT)

#: Index of the job's audio among chunk records (chunks count from 0).
AUDIO = -1

#: Extensions kept on the stored key for people browsing the bucket; anything else is stored as
#: ``source.bin``. ffmpeg decides what a file is from its bytes, not its name.
KNOWN_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".flv", ".3gp"}

PLAYLIST_NAME = "index.m3u8"
#: A rung's playlist while it still grows (per-rung mode): a key of its own, so a late duplicate
#: encode that dies mid-way can never put a playlist without ``#EXT-X-ENDLIST`` over a finished one.
LIVE_PLAYLIST_NAME = "live.m3u8"
MASTER_NAME = "master.m3u8"
#: The job's master playlist while it still encodes (the rungs playable so far): a key of its own,
#: so nothing that runs late can put it over the finished master.
LIVE_MASTER_NAME = "live-master.m3u8"
#: A rung's segments, as ffmpeg names them (``hls_segment_filename``) and as they are stored.
SEGMENT_PATTERN = "seg_%05d.ts"
SEGMENT_GLOB = "seg_*.ts"


# --- uploads ---
def source_key(job_id: str, filename: str) -> str:
    ext = Path(filename).suffix.lower()
    return f"{job_id}/source{ext if ext in KNOWN_EXTENSIONS else '.bin'}"


def chunks_prefix(job_id: str) -> str:
    """Every intermediate of chunked mode: removed as one prefix once the job ends."""
    return f"{job_id}/chunks/"


def chunk_output_key(job_id: str, rendition: str, index: int) -> str:
    return f"{chunks_prefix(job_id)}{rendition}/{index:05d}.ts"


def audio_key(job_id: str) -> str:
    return f"{chunks_prefix(job_id)}audio.ts"


# --- jobs ---
def manifest_key(job_id: str) -> str:
    return f"{job_id}/manifest.json"


def rendition_record_key(job_id: str, name: str, completed: bool = True) -> str:
    return f"{job_id}/renditions/{name}{'' if completed else '.live'}.json"


def chunk_record_key(job_id: str, index: int, completed: bool = True) -> str:
    name = "audio" if index == AUDIO else f"{index:05d}"
    return f"{job_id}/chunks/{name}{'' if completed else '.live'}.json"


def cancellation_key(job_id: str) -> str:
    return f"{job_id}/cancelled.json"


def requeues_key(job_id: str) -> str:
    return f"{job_id}/requeues.json"


# --- renditions ---
def job_prefix(job_id: str) -> str:
    return f"{job_id}/"


def rendition_prefix(job_id: str, rendition: str) -> str:
    """Where a rung's playlist and segments go (``SegmentUploader`` writes under it)."""
    return f"{job_id}/{rendition}/"


def segments_prefix(job_id: str, rendition: str) -> str:
    return f"{rendition_prefix(job_id, rendition)}{SEGMENT_GLOB.split('*')[0]}"


def rendition_playlist_uri(rendition: str) -> str:
    """A rung's playlist as the master playlist lists it: relative to the job's prefix."""
    return f"{rendition}/{PLAYLIST_NAME}"


def master_key(job_id: str) -> str:
    return f"{job_id}/{MASTER_NAME}"


def live_master_key(job_id: str) -> str:
    return f"{job_id}/{LIVE_MASTER_NAME}"


def poster_key(job_id: str) -> str:
    return f"{job_id}/poster.jpg"


# --- failures and audit ---
def failure_record_key(task_id: str) -> str:
    """A digest of the task id: a fixed-shape name that no id can steer into another prefix."""
    digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{digest}.json"


AUDIT_KEY_PATTERN = r"\d{8}T\d{6}\.\d{6}-[0-9a-f]{8}\.json"


def audit_key(now: datetime) -> str:
    """Sortable by time; the random tail keeps two entries of one microsecond apart."""
    return f"{now.strftime('%Y%m%dT%H%M%S.%f')}-{uuid.uuid4().hex[:8]}.json"
