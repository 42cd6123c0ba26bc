"""Submit a video: multipart upload under a key we choose, the manifest, the probe task.

The user's file name is data (kept in the manifest and, percent-encoded, in object metadata); it
never becomes part of a key, a path or a command line, so spaces, ``;``, ``$()`` or any Unicode in
a name are harmless.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

from config.settings import get_settings
from config.topology import declare_topology
from encodeq.manifest import JobStore, Manifest, SourceInfo
from encodeq.storage import UPLOADS, Storage

#: Extensions kept on the stored key for the benefit of people browsing the bucket; anything else
#: is stored as ``source.bin``. ffmpeg decides what a file is from its bytes, not its name.
KNOWN_EXTENSIONS = {".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mpg", ".flv", ".3gp"}


class SubmitError(Exception):
    """The file cannot be submitted (missing, not a regular file, over the size limit)."""


_topology_declared = False


def _ensure_topology() -> None:
    """Declare the queues once per process, so a job published before any worker ran is kept."""
    global _topology_declared
    if not _topology_declared:
        from worker.app import app

        with app.connection_for_write() as connection:
            declare_topology(connection)
        _topology_declared = True


def check_file(path: Path) -> int:
    """The file's size, or SubmitError saying why it cannot be uploaded."""
    if not path.exists():
        raise SubmitError(f"{path}: no such file")
    if not path.is_file():
        raise SubmitError(f"{path}: not a regular file")
    size = path.stat().st_size
    limit = get_settings().max_upload_bytes
    if size > limit:
        raise SubmitError(f"{path}: {size} bytes is over the upload limit of {limit} bytes")
    return size


def source_key(job_id: str, filename: str) -> str:
    ext = Path(filename).suffix.lower()
    return f"{job_id}/source{ext if ext in KNOWN_EXTENSIONS else '.bin'}"


def submit(path: Path, storage: Storage | None = None, progress: Any = None) -> Manifest:
    """Upload ``path`` and queue its job; returns the queued manifest."""
    from worker.events import emit
    from worker.tasks import probe

    size = check_file(path)
    storage = storage or Storage()
    _ensure_topology()
    job_id = uuid.uuid4().hex
    uri = storage.put_file(
        UPLOADS,
        source_key(job_id, path.name),
        path,
        metadata={"original-filename": quote(path.name)},
        progress=progress,
    )
    manifest = Manifest(
        job_id=job_id, source=SourceInfo(uri=uri, filename=path.name, size_bytes=size)
    )
    JobStore(storage).save(manifest)
    # Publisher confirms are on (broker_transport_options): this returns once RabbitMQ has the task.
    probe.apply_async(args=[job_id])
    emit("job.queued", job_id=job_id, filename=path.name, size_bytes=size)
    return manifest
