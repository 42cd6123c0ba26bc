"""Write-behind persistence for the embedded S3 server: moto keeps objects in memory only.

``encodeq up`` must find every job manifest and rendition again after a restart, and moto has no
persistence of its own. So the server notes which bucket (and key) each write touched
(console/s3server.py), and this mirror, a daemon thread, copies what changed to the data
directory (console/s3_disk.py) about every 0.5 s, talking S3 to the server like any client. On
start, before any client connects, ``restore`` uploads the directory into the empty server.

A write the server noted by key costs one GET (its headers say whether the bytes changed); one
it could not (a batch delete, a bucket made or removed) costs a listing of the bucket.

Write-behind: an acknowledged write reaches the disk within ~0.5 s plus one sync. ``stop()``
syncs everything first, so a clean stop loses nothing. A SIGKILL loses the writes of the last
half second or so and what the sync under way had not finished: it never leaves half a file
under an object's name, but an object copied just before it may come back with a guessed content
type (its bytes were renamed into place, the bucket's index was not saved yet). ``flush()``
syncs now and returns once every write acknowledged before it was called is on disk: what tests
and ``encodeq up`` wait on, instead of sleeping.
"""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from minio import Minio
from minio.error import S3Error

from console.s3_disk import DiskStore, Entry
from core.storage import PART_SIZE
from worker.hls import CONTENT_TYPES

log = logging.getLogger(__name__)

#: Stored with an object besides ``x-amz-meta-*`` (what moto keeps and the minio SDK sends).
KEPT_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language")
CHUNK = 1024 * 1024
#: During a long sync the index is saved this often (s).
CHECKPOINT_S = 1.0


class Mirror:
    """Copies an S3 server's buckets to a directory and back (see the module docstring)."""

    def __init__(self, client: Minio, data_dir: Path, interval: float = 0.5) -> None:
        self.client = client
        self.disk = DiskStore(data_dir)
        self.interval = interval
        self._marks_lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time: the thread's, flush's, stop's
        #: Bucket -> keys written since the last sync (None: the whole bucket, listed).
        self._dirty: dict[str, set[str] | None] = {}
        self._everything = False
        self._indexes: dict[str, dict[str, Entry]] = {}
        self._saved_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # --- marks -------------------------------------------------------------------------------
    def mark(self, bucket: str | None, key: str | None = None) -> None:
        """A write touched ``bucket``/``key`` (no key: the bucket; no bucket: anything)."""
        with self._marks_lock:
            if bucket is None:
                self._everything = True
            elif key is None:
                self._dirty[bucket] = None
            elif (keys := self._dirty.setdefault(bucket, set())) is not None:
                keys.add(key)

    def _take_marks(self) -> dict[str, set[str] | None]:
        with self._marks_lock:
            dirty, everything = self._dirty, self._everything
            self._dirty, self._everything = {}, False
        if everything:
            try:
                on_server = {bucket.name for bucket in self.client.list_buckets()}
            except Exception:
                self.mark(None)
                for bucket in dirty:
                    self.mark(bucket)
                raise
            for bucket in on_server | self.disk.buckets():
                dirty[bucket] = None
        return dirty

    # --- the thread --------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="s3-mirror", daemon=True)
        self._thread.start()

    def stop(self, sync: bool = True) -> None:
        """Stop the thread; with ``sync``, then copy everything: a clean stop loses nothing that
        was written before it (stop the server's clients first)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if sync:
            self.sync_all()

    def _run(self) -> None:
        last_error = ""
        while not self._stopping.wait(self.interval):
            try:
                self.flush()
                last_error = ""
            except Exception as exc:  # the next round retries what failed; say so once
                if str(exc) != last_error:
                    log.warning("S3 mirror: sync failed, retrying: %s", exc, exc_info=True)
                last_error = str(exc)

    # --- syncing -----------------------------------------------------------------------------
    def flush(self) -> None:
        """Sync what was written since the last sync; returns when it is on disk.

        Every write the server acknowledged before this call is on disk when it returns: the
        server marks a write before it answers, and a sync that took the mark before this call
        holds the lock this call waits on."""
        with self._sync_lock:
            errors: list[Exception] = []
            for bucket, keys in self._take_marks().items():
                try:
                    self._sync_bucket(bucket, keys)
                except Exception as exc:
                    self.mark(bucket)  # the whole bucket again next time
                    errors.append(exc)
            if errors:
                raise errors[0]

    def sync_all(self) -> None:
        """Compare every bucket, on the server and on disk, whatever was marked."""
        self.mark(None)
        self.flush()

    def _sync_bucket(self, bucket: str, keys: set[str] | None) -> None:
        index = self._index(bucket)
        if keys is None or index is None:
            self._sync_listing(bucket)
            return
        for key in sorted(keys):
            entry = index.get(key)
            try:
                fetched = self._fetch(bucket, key, entry)
            except S3Error as exc:
                if exc.code != "NoSuchBucket":
                    raise
                self._sync_listing(bucket)
                return
            if fetched is None and entry is None:
                # Gone, and never seen: written and deleted within a round, or a key the
                # server's note got wrong. Listing the bucket settles which.
                self._sync_listing(bucket)
                return
            self._apply(bucket, index, key, fetched)
            self._checkpoint(bucket, index)
        self._save(bucket, index)

    def _sync_listing(self, bucket: str) -> None:
        """Make the bucket's directory match the server's listing of it."""
        try:
            listed = {
                obj.object_name: _signature(obj.etag, obj.size, obj.last_modified)
                for obj in self.client.list_objects(bucket, recursive=True)
            }
        except S3Error as exc:
            if exc.code != "NoSuchBucket":
                raise
            self.disk.drop_bucket(bucket)
            self._indexes.pop(bucket, None)
            return
        self.disk.add_bucket(bucket)
        index = self._index(bucket) or {}
        self._indexes[bucket] = index
        for key in sorted(index.keys() - listed.keys()):
            self._apply(bucket, index, key, None)
        for key, signature in sorted(listed.items()):
            entry = index.get(key)
            if entry is None or entry["signature"] != signature:
                self._apply(bucket, index, str(key), self._fetch(bucket, str(key), entry))
                self._checkpoint(bucket, index)
        self._save(bucket, index)

    def _apply(self, bucket: str, index: dict[str, Entry], key: str, entry: Entry | None) -> None:
        if entry is not None:
            index[key] = entry
        elif key in index:
            self.disk.remove(bucket, index.pop(key)["file"])

    def _fetch(self, bucket: str, key: str, entry: Entry | None) -> Entry | None:
        """The object as the server has it now, copied to disk unless ``entry`` already has this
        version; None when it is gone. One GET: its headers say whether the bytes are needed."""
        try:
            response = self.client.get_object(bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                return None
            raise
        try:
            headers = {name.lower(): value for name, value in response.headers.items()}
            modified = headers.get("last-modified")
            signature = _signature(
                headers.get("etag"),
                int(headers.get("content-length", 0)),
                email.utils.parsedate_to_datetime(modified) if modified else None,
            )
            if entry is not None and entry["signature"] == signature:
                return entry
            # Raw bytes: a Content-Encoding: gzip object is stored gzipped, as the server has it.
            chunks = response.stream(CHUNK, decode_content=False)
            file = self.disk.write(bucket, key, chunks, entry["file"] if entry else None)
        finally:
            response.close()
            response.release_conn()
        return Entry(
            file=file,
            signature=signature,
            content_type=headers.get("content-type", "application/octet-stream"),
            headers={
                name: value
                for name, value in headers.items()
                if name.startswith("x-amz-meta-") or name in KEPT_HEADERS
            },
        )

    def _index(self, bucket: str) -> dict[str, Entry] | None:
        """The bucket's index (kept in memory: the mirror is its only writer); None if the bucket
        is not on disk yet."""
        if bucket not in self._indexes and bucket in self.disk.buckets():
            self._indexes[bucket] = self.disk.load(bucket)
        return self._indexes.get(bucket)

    def _save(self, bucket: str, index: dict[str, Entry]) -> None:
        self.disk.save(bucket, index)
        self._saved_at = time.monotonic()

    def _checkpoint(self, bucket: str, index: dict[str, Entry]) -> None:
        """Save the index now and then during a long sync, so a crash loses little of it."""
        if time.monotonic() - self._saved_at > CHECKPOINT_S:
            self._save(bucket, index)

    # --- restoring ---------------------------------------------------------------------------
    def restore(self) -> int:
        """Upload the data directory into the (empty) server; how many objects.

        Call it before any client writes: the marks its own uploads leave are dropped."""
        with self._sync_lock:
            self.disk.clean_tmp()
            count = sum(
                self._restore_bucket(bucket)
                for bucket in sorted(self.disk.buckets() | self.disk.strays())
            )
            with self._marks_lock:
                self._dirty, self._everything = {}, False
            return count

    def _restore_bucket(self, bucket: str) -> int:
        try:
            self.client.make_bucket(bucket)
        except S3Error as exc:
            if exc.code != "BucketAlreadyOwnedByYou":
                raise
        index = self.disk.load(bucket)
        for key, entry in list(index.items()):
            if not self.disk.path(entry["file"]).is_file():
                log.warning("S3 mirror: %s/%s has no file (deleted before a crash?)", bucket, key)
                del index[key]
        for key, file in self.disk.orphans(bucket, index).items():
            log.info("S3 mirror: adopting %s/%s (a file the index did not list)", bucket, key)
            index[key] = Entry(file=file, signature="", content_type=_guess(key), headers={})
        self.disk.prune(bucket, index)
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda item: self._upload(bucket, *item), index.items()))
        # The server's signatures of what was just uploaded, so the first sync copies nothing.
        for obj in self.client.list_objects(bucket, recursive=True):
            if obj.object_name in index:
                signature = _signature(obj.etag, obj.size, obj.last_modified)
                index[str(obj.object_name)]["signature"] = signature
        self.disk.add_bucket(bucket)
        self.disk.save(bucket, index)
        self._indexes[bucket] = index
        return len(index)

    def _upload(self, bucket: str, key: str, entry: Entry) -> None:
        # The project's part size, so its multipart objects get back the ETag they had.
        self.client.fput_object(
            bucket,
            key,
            str(self.disk.path(entry["file"])),
            content_type=entry["content_type"],
            metadata=dict(entry["headers"]) or None,
            part_size=PART_SIZE,
        )


def _signature(etag: Any, size: Any, modified: datetime | None) -> str:
    """Which version of an object: ETag, size and time (whole seconds, as S3 reports them)."""
    stamp = int(modified.timestamp()) if modified else 0
    return f"{str(etag or '').strip(chr(34))}:{size}:{stamp}"


def _guess(key: str) -> str:
    suffix = Path(key).suffix.lower()
    return CONTENT_TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"
