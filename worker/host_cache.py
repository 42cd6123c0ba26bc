"""A per-host cache of a job's objects, so what one task on a host downloaded or uploaded serves
every later task of the job on the same host instead of a round trip through S3.

The probe's download of the upload serves every per-rung encode; in chunked mode the chunks the
probe cut, the outputs each chunk encode wrote and the audio serve the encodes and joins that run on
the host where they were made. Other hosts still fetch them from S3, which stays the only source of
truth: an entry is named by its object's ETag, checked with a HEAD on every use, so a replaced
object (an upload fixed, then replayed) is a different entry and never a stale hit.

Entries live under ``<work dir>/encodeq-cache/<job id>/``: the job id is ours (checked before any
key or path is built from it) and the keys are the project's own. Downloads land under a temporary
name and are renamed into place, so two pool processes never read half a file. An entry goes when
its job ends on this host, and any left by jobs that ended elsewhere is pruned by age.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from config.settings import get_settings
from encodeq.errors import PermanentError
from encodeq.storage import UPLOADS, Storage, parse_uri

#: Entries untouched for this long belong to jobs that ended on another host.
MAX_AGE_S = 6 * 3600


def cache_root() -> Path:
    return Path(get_settings().work_dir or tempfile.gettempdir()) / "encodeq-cache"


def _entry(job_id: str, logical: str, key: str, etag: str) -> Path:
    flat = key.replace("/", "~")  # one level under the job's folder, whatever the key
    tag = etag.strip('"')
    return cache_root() / job_id / f"{logical}~{flat}.{tag}"


def fetch(storage: Storage, job_id: str, logical: str, key: str) -> Path:
    """A local copy of the object: this host's entry when it has one, else a download."""
    etag = storage.client.stat_object(storage.bucket(logical), key).etag
    path = _entry(job_id, logical, key, etag)
    if path.exists():
        os.utime(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".download.{os.getpid()}"
    storage.download(logical, key, partial)
    os.replace(partial, path)
    prune()
    return path


def fetch_as(storage: Storage, job_id: str, logical: str, key: str, dest: Path) -> Path:
    """``fetch``, then a hard link at ``dest`` (a name the caller chose, e.g. for a concat list)."""
    _link(fetch(storage, job_id, logical, key), dest)
    return dest


def _link(source: Path, dest: Path) -> None:
    """Put ``source``'s content at ``dest`` atomically: a hard link, or a copy across devices."""
    partial = dest.parent / f".link.{os.getpid()}.{dest.name}"
    partial.unlink(missing_ok=True)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, dest)


def put(
    storage: Storage, job_id: str, logical: str, key: str, path: Path, content_type: str
) -> str:
    """Upload ``path`` and keep it as this host's entry (a hard link: no copy); the object's URI."""
    uri, etag = storage.put_file_etag(logical, key, path, content_type)
    entry = _entry(job_id, logical, key, etag)
    entry.parent.mkdir(parents=True, exist_ok=True)
    _link(path, entry)
    return uri


def local_source(storage: Storage, job_id: str, uri: str) -> Path:
    """A local copy of the job's upload, under a name we chose; ffmpeg only ever opens that."""
    bucket, key = parse_uri(uri)
    if bucket != storage.bucket(UPLOADS):
        raise PermanentError("bad_source", f"source is not in the uploads bucket: {uri}")
    return fetch(storage, job_id, UPLOADS, key)


def drop(job_id: str) -> None:
    """Forget the job's entries on this host (it ended here)."""
    shutil.rmtree(cache_root() / job_id, ignore_errors=True)


def prune(max_age_s: float = MAX_AGE_S) -> None:
    """Remove entries nobody has touched for ``max_age_s`` (a folder just made counts as touched,
    so another process's download in progress is never pulled from under it)."""
    cutoff = time.time() - max_age_s
    for folder in cache_root().glob("*"):
        try:
            newest = max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        if newest < cutoff:
            shutil.rmtree(folder, ignore_errors=True)
