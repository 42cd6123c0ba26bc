"""A per-host cache of a job's objects, so what one task on a host downloaded or uploaded serves
every later task of the job on the same host instead of a round trip through S3.

The probe's download of the upload serves every per-rung encode; in chunked mode the chunks the
probe cut, the outputs each chunk encode wrote and the audio serve the encodes and joins that run on
the host where they were made. Other hosts still fetch them from S3, which stays the only source of
truth: an entry is named by its object's ETag, checked with a HEAD on every use, so a replaced
object (an upload fixed, then replayed) is a different entry and never a stale hit.

Entries live under ``<private dir>/cache/<job id>/``: the job id is ours (checked before any key or
path is built from it) and the keys are the project's own.

**Readers hold hard links, so deleting a cache name never affects one.** Inside ``reading`` (every
task's ``workdir``), ``fetch`` hands out a hard link of the reader's own in its scratch folder; a
download lands there first and is then linked into the cache. An entry whose link count is above 1
is in use (a reader's link, or the file a task made and ``put``), so eviction skips it: evicting it
would free nothing. Eviction and drops only ever unlink names; a reader keeps its bytes until its
scratch folder goes. (Shared ``flock``s held per entry would need one open file per entry for the
whole task, hundreds for a long join, and a lock dance on every read.)

**Budget.** ``ENCODEQ_HOST_CACHE_BYTES`` (see config/settings.py), least recently used first (a
hit refreshes the entry's mtime). Entries in use are never evicted, so the cache exceeds its
budget only by what running tasks hold.

**A finished job's entries go on every host.** Every worker follows ``job.completed`` and
``job.failed`` on the events exchange (worker/housekeeping.py) and calls ``job_ended``: the job's
folder is removed at once when no task of the job runs on this host, else by the last such task
as it leaves (``task_left``). A sibling's failure therefore never removes entries under a task
still working. What a missed event leaves is evicted by the budget or pruned by age.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from config.settings import get_settings
from core.errors import PermanentError
from core.job_model import is_job_id
from core.layout import UPLOADS
from core.storage import Storage, parse_uri
from worker import scratch

logger = logging.getLogger(__name__)

#: Entries untouched for this long belong to jobs that ended while this host did not listen.
MAX_AGE_S = 6 * 3600
#: Markers of ended jobs are kept this long, so a late duplicate task of an ended job (which
#: fills the cache again) still drops its entries as it leaves; after that, age prunes them.
ENDED_MARKER_AGE_S = MAX_AGE_S
_ENDED = ".ended"

#: The folder the current task reads into (set by ``reading``); None outside a task.
_readers: contextvars.ContextVar[Path | None] = contextvars.ContextVar("readers", default=None)


def cache_root() -> Path:
    return get_settings().private_dir("cache")


def _job_folder(job_id: str) -> Path:
    if not is_job_id(job_id):
        raise PermanentError("bad_arguments", f"not a job id: {job_id!r}")
    return cache_root() / job_id


def _entry(job_id: str, logical: str, key: str, etag: str) -> Path:
    flat = key.replace("/", "~")  # one level under the job's folder, whatever the key
    tag = etag.strip('"')
    return _job_folder(job_id) / f"{logical}~{flat}.{tag}"


@contextlib.contextmanager
def reading(folder: Path) -> Iterator[None]:
    """Within: entries are handed out as hard links under ``folder`` (the task's scratch)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = _readers.set(folder)
    try:
        yield
    finally:
        _readers.reset(token)


def fetch(storage: Storage, job_id: str, logical: str, key: str) -> Path:
    """A local copy of the object: this host's entry when it has one, else a download.

    Inside ``reading``: a hard link of the caller's own, which no eviction or drop can take away.
    Outside (tools, tests): the cache's own file, which an eviction may remove at any time.
    """
    info = storage.client.stat_object(storage.bucket(logical), key)
    entry = _entry(job_id, logical, key, info.etag)
    mine = _readers.get()
    if mine is None:
        return _fetch_shared(storage, logical, key, entry, info.size or 0)
    link = mine / entry.name
    if link.exists():  # fetched before in this task (same ETag: same bytes)
        return link
    try:
        _link(entry, link)  # a hard link (a copy if the scratch is on another file system)
    except FileNotFoundError:  # not cached here (or evicted a moment ago)
        pass
    else:
        _touch(entry)
        return link
    make_room(info.size or 0)
    partial = mine / f".download.{uuid.uuid4().hex}"
    storage.download(logical, key, partial)
    os.replace(partial, link)
    _publish(link, entry)
    _touch(entry)
    return link


def _fetch_shared(storage: Storage, logical: str, key: str, entry: Path, size: int) -> Path:
    if entry.exists():
        _touch(entry)
        return entry
    make_room(size)
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = entry.parent / f".download.{uuid.uuid4().hex}"
    storage.download(logical, key, partial)
    os.replace(partial, entry)
    _touch(entry)
    return entry


def _touch(entry: Path) -> None:
    """Mark an entry used now (LRU order), with the fine clock: file systems stamp times with a
    coarse one (a few ms), which would tie entries used one after the other."""
    now = time.time_ns()
    with contextlib.suppress(FileNotFoundError):
        os.utime(entry, ns=(now, now))


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


def _publish(source: Path, entry: Path) -> None:
    """Make ``source`` this host's entry (a hard link: no copy). An entry already there stays: the
    same ETag is the same bytes."""
    for _ in range(3):  # the job's folder may be removed between our mkdir and our link
        entry.parent.mkdir(parents=True, exist_ok=True)
        try:
            if entry.exists():
                return
            _link(source, entry)
            return
        except FileNotFoundError:
            continue


def put(
    storage: Storage, job_id: str, logical: str, key: str, path: Path, content_type: str
) -> str:
    """Upload ``path`` and keep it as this host's entry (a hard link: no copy); the object's URI."""
    uri, etag = storage.put_file_etag(logical, key, path, content_type)
    entry = _entry(job_id, logical, key, etag)
    _publish(path, entry)
    _touch(entry)
    make_room()
    return uri


def local_source(storage: Storage, job_id: str, uri: str) -> Path:
    """A local copy of the job's upload, under a name we chose; ffmpeg only ever opens that."""
    bucket, key = parse_uri(uri)
    if bucket != storage.bucket(UPLOADS):
        raise PermanentError("bad_source", f"source is not in the uploads bucket: {uri}")
    return fetch(storage, job_id, UPLOADS, key)


# --- budget ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    path: Path
    size: int
    used: float  # mtime: last fetched or made
    links: int


def _entries() -> list[_Entry]:
    found = []
    for job in cache_root().iterdir():
        if job.name.startswith(".") or not job.is_dir():
            continue
        with contextlib.suppress(FileNotFoundError):  # dropped meanwhile
            for path in job.iterdir():
                if path.name.startswith("."):  # a download or link in progress
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = path.lstat()
                    if stat.S_ISREG(st.st_mode):
                        found.append(_Entry(path, st.st_size, st.st_mtime, st.st_nlink))
    return found


def budget_bytes(cached: int) -> int:
    """``host_cache_bytes``, but never more than half of what the cache could take on its disk
    (its own bytes plus the free space): the scratch folders beside it need room to encode."""
    free = shutil.disk_usage(cache_root()).free
    return min(get_settings().host_cache_bytes, (cached + free) // 2)


def size_bytes() -> int:
    """Bytes the cache's entries take (those in use by tasks included)."""
    return sum(e.size for e in _entries())


def make_room(incoming: int = 0) -> list[Path]:
    """Evict least recently used entries no task holds until ``incoming`` more bytes fit the
    budget; the evicted entries. Entries in use stay even when that leaves the cache over."""
    entries = sorted(_entries(), key=lambda e: e.used)
    total = sum(e.size for e in entries)
    budget = budget_bytes(total)
    evicted = []
    for e in entries:
        if total + incoming <= budget:
            break
        if e.links > 1:  # a task's link, or the file a task made: in use
            continue
        with contextlib.suppress(FileNotFoundError):  # another process evicted it first
            e.path.unlink()
        total -= e.size
        evicted.append(e.path)
    if evicted:
        logger.info("host cache: evicted %d entries to stay within %d bytes", len(evicted), budget)
    return evicted


# --- the end of a job ----------------------------------------------------------------------------
def _ended_marker(job_id: str) -> Path:
    folder = cache_root() / _ENDED
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / job_id


def job_ended(job_id: str) -> bool:
    """The job completed or failed (anywhere): drop its entries on this host once no task of it
    runs here; True when they were dropped now. Safe to call for any string, any number of
    times."""
    if not is_job_id(job_id):
        return False
    _ended_marker(job_id).touch()  # first: a task leaving after our look below sees it
    if scratch.busy(job_id):
        return False
    drop(job_id)
    return True


def job_reopened(job_id: str) -> None:
    """A replay put the job back to work: its entries are useful again."""
    if is_job_id(job_id):
        _ended_marker(job_id).unlink(missing_ok=True)


def task_left(job_id: str) -> None:
    """A task of the job left this host (its scratch folder is gone): drop the job's entries if
    the job has ended and no other task of it runs here."""
    try:
        if is_job_id(job_id) and _ended_marker(job_id).exists() and not scratch.busy(job_id):
            drop(job_id)
    except OSError:  # never fail a task over housekeeping: the budget and prune catch up
        logger.warning("host cache: could not drop the entries of job %s", job_id, exc_info=True)


def drop(job_id: str) -> None:
    """Remove the job's entries on this host now (readers keep their own links)."""
    if is_job_id(job_id):
        shutil.rmtree(cache_root() / job_id, ignore_errors=True)


def prune(max_age_s: float = MAX_AGE_S) -> None:
    """Remove what nobody has touched for ``max_age_s``: unused entries (of jobs that ended while
    this host was not listening), downloads of a task that died, empty folders, old markers."""
    now = time.time()
    root = cache_root()
    for job in root.iterdir():
        if job.name == _ENDED:
            for marker in job.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if marker.stat().st_mtime < now - ENDED_MARKER_AGE_S:
                        marker.unlink()
            continue
        if not job.is_dir() or job.is_symlink():
            continue
        with contextlib.suppress(FileNotFoundError):
            for path in job.iterdir():
                with contextlib.suppress(OSError):  # gone meanwhile, or not a file of ours
                    st = path.lstat()
                    if st.st_mtime < now - max_age_s and st.st_nlink == 1:
                        path.unlink()
            with contextlib.suppress(OSError):  # not empty, or just filled again
                if job.stat().st_mtime < now - max_age_s:
                    job.rmdir()
