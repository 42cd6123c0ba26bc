"""A per-host cache of downloaded sources, so the probe's download serves every task of the job
that runs on the same host instead of each fetching the whole upload again.

Entries live under ``<work dir>/encodeq-sources/<job id>/source.<etag>``: the job id is ours
(checked before any key or path is built from it), the ETag makes a replaced upload (fixed, then
replayed) a different entry. Downloads land under a temporary name and are renamed into place, so
two pool processes never read half a file. An entry goes when its job ends on this host, and any
left by jobs that ended elsewhere is pruned by age.
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
    return Path(get_settings().work_dir or tempfile.gettempdir()) / "encodeq-sources"


def local_source(storage: Storage, job_id: str, uri: str) -> Path:
    """A local copy of the job's upload, under a name we chose; ffmpeg only ever opens that."""
    bucket, key = parse_uri(uri)
    if bucket != storage.bucket(UPLOADS):
        raise PermanentError("bad_source", f"source is not in the uploads bucket: {uri}")
    etag = storage.client.stat_object(bucket, key).etag.strip('"')
    folder = cache_root() / job_id
    path = folder / f"source.{etag}"
    if path.exists():
        os.utime(path)
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".download.{os.getpid()}"
    storage.download(UPLOADS, key, partial)
    os.replace(partial, path)
    prune()
    return path


def drop(job_id: str) -> None:
    """Forget the job's source on this host (it ended here)."""
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
