"""The S3 mirror's files: ``<data_dir>/<bucket>/<key>``, and an index per bucket beside them.

An object's bytes live at its key's own path, so the data directory reads like the buckets do
(``ls data/encodeq-renditions/<job>/``). What a path cannot say lives in the bucket's index,
``.mirror/index/<bucket>.json``: content type, user metadata (``x-amz-meta-*``), the signature
(ETag, size, time) the object was copied at, and which file holds it. A key that is no file name
(``a`` beside ``a/b``, ``dir/``, ``../x``, a segment over 255 bytes) keeps its bytes under
``.mirror/keys/<bucket>/<sha256 of the key>`` instead. Bucket names never start with a dot, so
``.mirror`` is never a bucket.

Every file is written whole under ``.mirror/tmp`` and renamed into place (``os.replace``), so a
crash leaves the old file or the new one under a real name, never half of one. No fsync: this
survives the process dying, not the machine losing power.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from minio.helpers import check_bucket_name

META = ".mirror"
#: Longest path (bytes) written at a key's own path; longer keys go to ``.mirror/keys``.
MAX_PATH_BYTES = 3800


class Entry(TypedDict):
    """One object in a bucket's index."""

    #: The file holding the object's bytes, relative to the data directory.
    file: str
    #: ``etag:size:mtime`` as the server reported it when the bytes were copied ("" unknown).
    signature: str
    content_type: str
    #: What else the object was stored with: ``x-amz-meta-*``, cache-control and friends.
    headers: dict[str, str]


class DiskStore:
    """The data directory. Not thread-safe: the mirror uses it from one sync at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index_dir = root / META / "index"
        self._keys_dir = root / META / "keys"
        self._tmp_dir = root / META / "tmp"
        for directory in (self._index_dir, self._keys_dir, self._tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # --- buckets -----------------------------------------------------------------------------
    def buckets(self) -> set[str]:
        """The buckets this store wrote (those with an index): the only ones it ever removes."""
        return {path.stem for path in self._index_dir.glob("*.json")}

    def strays(self) -> set[str]:
        """Directories named like buckets with no index: copied in by hand, or a crash between
        creating a bucket's directory and its index. Restoring adopts them."""
        known = self.buckets()
        return {
            path.name
            for path in self.root.iterdir()
            if path.is_dir() and _is_bucket_name(path.name) and path.name not in known
        }

    def add_bucket(self, bucket: str) -> None:
        (self.root / bucket).mkdir(exist_ok=True)
        if not self._index_path(bucket).exists():
            self.save(bucket, {})

    def drop_bucket(self, bucket: str) -> None:
        """The bytes first, the index last: a crash in between leaves an index of missing files
        (restored as an empty bucket), never files that restoring would bring back."""
        shutil.rmtree(self.root / bucket, ignore_errors=True)
        shutil.rmtree(self._keys_dir / bucket, ignore_errors=True)
        self._index_path(bucket).unlink(missing_ok=True)

    # --- the index ---------------------------------------------------------------------------
    def load(self, bucket: str) -> dict[str, Entry]:
        path = self._index_path(bucket)
        if not path.exists():
            return {}
        document = json.loads(path.read_text())
        return dict(document["objects"])

    def save(self, bucket: str, index: dict[str, Entry]) -> None:
        data = json.dumps({"version": 1, "objects": index}, indent=1, sort_keys=True).encode()
        self._replace(self._index_path(bucket), [data])

    def _index_path(self, bucket: str) -> Path:
        return self._index_dir / f"{bucket}.json"

    # --- objects -----------------------------------------------------------------------------
    def write(self, bucket: str, key: str, chunks: Iterable[bytes], current: str | None) -> str:
        """Store an object's bytes; returns the file (relative) now holding it. ``current`` is the
        file that held its previous version, removed if the object moved."""
        target = self._natural(bucket, key) or self._keys_dir / bucket / _digest(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._replace(target, chunks)
        file = target.relative_to(self.root).as_posix()
        if current and current != file:
            self.remove(bucket, current)
        return file

    def remove(self, bucket: str, file: str) -> None:
        """Delete an object's file, and the directories its key made that are now empty."""
        path = self.root / file
        path.unlink(missing_ok=True)
        top = self.root / bucket
        for parent in path.parents:
            if parent in (top, self._keys_dir / bucket) or not parent.is_relative_to(top):
                break
            try:
                parent.rmdir()
            except OSError:  # not empty
                break

    def path(self, file: str) -> Path:
        return self.root / file

    def orphans(self, bucket: str, index: dict[str, Entry]) -> dict[str, str]:
        """Files under the bucket's directory that no index entry claims, by key: written just
        before a crash, before the index caught up (or copied in by hand)."""
        claimed = {entry["file"] for entry in index.values()}
        top = self.root / bucket
        found = {}
        for path in sorted(top.rglob("*")):
            file = path.relative_to(self.root).as_posix()
            if path.is_file() and not path.is_symlink() and file not in claimed:
                found[path.relative_to(top).as_posix()] = file
        return found

    def prune(self, bucket: str, index: dict[str, Entry]) -> None:
        """Forget hashed-name files no entry claims (their key cannot be read back from them)."""
        claimed = {entry["file"] for entry in index.values()}
        directory = self._keys_dir / bucket
        if directory.is_dir():
            for path in directory.iterdir():
                if path.relative_to(self.root).as_posix() not in claimed:
                    path.unlink(missing_ok=True)

    def clean_tmp(self) -> None:
        """Temporary files a crash left behind (never under a real name)."""
        for path in self._tmp_dir.iterdir():
            path.unlink(missing_ok=True)

    def _natural(self, bucket: str, key: str) -> Path | None:
        """The key's own path, when it is a usable file name that no other key's file or
        directory is in the way of."""
        parts = key.split("/")
        if not all(map(_is_file_name, parts)):
            return None
        top = self.root / bucket
        path = top.joinpath(*parts)
        if len(str(path).encode()) > MAX_PATH_BYTES or path.is_dir() or path.is_symlink():
            return None
        for parent in path.parents:
            if parent == top:
                return path
            if parent.exists() and not parent.is_dir():
                return None  # key "a/b" where key "a" is a file
        return None

    def _replace(self, target: Path, chunks: Iterable[bytes]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _is_file_name(part: str) -> bool:
    return part not in ("", ".", "..") and "\0" not in part and len(part.encode()) <= 255


def _is_bucket_name(name: str) -> bool:
    """A directory named otherwise is not a bucket, and is left alone."""
    try:
        check_bucket_name(name, strict=True)
    except ValueError:
        return False
    return True


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
