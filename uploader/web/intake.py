"""Receiving an upload over HTTP without holding it in memory, then submitting it as a job.

The multipart body is parsed as it streams in (python-multipart's push parser); the file part goes
chunk by chunk to a temporary file with a name we chose, in the per-user private folder (0700,
``Settings.private_dir``), created 0600 and exclusively (never an existing file or link someone
planted), and the size limit is enforced while it streams: the first byte over
``max_upload_bytes`` ends the upload with 413, and nothing is stored. The temporary file then goes
to S3 as a multipart upload (the same code path as ``encodeq upload``) and is deleted. The
browser's file name is data only, exactly as in uploader/submit.py.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from config.settings import Settings
from core.job_model import Manifest, Priority
from core.storage import Storage
from uploader.submit import BrokerUnavailable, Busy, SubmitError, submit

#: The form field that carries the file.
FILE_FIELD = "file"
#: Bytes a multipart envelope may add around the file (boundaries, part headers, small fields).
ENVELOPE_BYTES = 64 * 1024
#: After a refusal, this much of the rest of the body is still read (and dropped) so the client
#: gets to read the error instead of a reset connection; a larger body is cut off.
DRAIN_BYTES = 64 * 1024 * 1024
MAX_FILENAME = 255
#: The private subfolder uploads stream into before they go to S3.
UPLOAD_FOLDER = "http-uploads"


class UploadError(Exception):
    """A refused upload: HTTP status, stable error code, and a message for a person."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Received:
    path: Path
    filename: str
    size: int


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: str | None = None
    filename: str | None = None


def clean_filename(raw: bytes) -> str:
    """The browser's name for the file, as data: no directories, bounded, valid text."""
    name = raw.decode("utf-8", errors="replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return name[:MAX_FILENAME] or "upload"


async def drain(chunks: AsyncIterator[bytes], budget: int = DRAIN_BYTES) -> None:
    """Read and drop what is left of a request body, up to ``budget`` bytes."""
    async for chunk in chunks:
        budget -= len(chunk)
        if budget < 0:
            return


class _FileReceiver:
    """Push-parser callbacks: the one file part to disk, counted; other fields ignored."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.limit = limit
        self.path = folder / f"upload-{uuid.uuid4().hex}"
        self.size = 0
        self.files = 0
        self.filename: str | None = None
        self.too_large = False
        self._file: object | None = None
        self._part: _Part | None = None
        self._header_field = b""
        self._header_value = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._part = _Part()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        assert self._part is not None
        self._part.headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        assert self._part is not None
        _, options = parse_options_header(self._part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self._part.field_name = name.decode("latin-1") if name is not None else None
        if self._part.field_name == FILE_FIELD and b"filename" in options:
            self.files += 1
            if self.files > 1:
                raise UploadError(400, "too_many_files", "send one file per upload")
            self.filename = clean_filename(options[b"filename"])
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            self._file = os.fdopen(fd, "wb")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is None or self.too_large:
            return
        self.size += end - start
        if self.size > self.limit:
            self.too_large = True
            return
        self._file.write(data[start:end])  # type: ignore[attr-defined]

    def _part_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None


async def receive(
    content_type: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    settings: Settings,
) -> Received:
    """Stream a ``multipart/form-data`` body's ``file`` part to a temporary file.

    The caller owns the returned file and deletes it. Refusals raise ``UploadError``; the body is
    drained first (up to ``DRAIN_BYTES``) so the client reads the error.
    """
    limit = settings.max_upload_bytes
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        await drain(chunks)
        raise UploadError(
            415, "not_multipart", "send the file as multipart/form-data in a field named 'file'"
        )
    declared = int(content_length) if content_length and content_length.isdigit() else None
    if declared is not None and declared > limit + ENVELOPE_BYTES:
        if declared <= DRAIN_BYTES:
            await drain(chunks)
        raise UploadError(413, "too_large", _too_large(limit))
    folder = settings.private_dir(UPLOAD_FOLDER)
    receiver = _FileReceiver(folder, limit)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in chunks:
            parser.write(chunk)
            if receiver.too_large:
                raise UploadError(413, "too_large", _too_large(limit))
        parser.finalize()
    except UploadError:
        _discard(receiver)
        await drain(chunks)
        raise
    except MultipartParseError as exc:
        _discard(receiver)
        await drain(chunks)
        message = f"the multipart body does not parse: {exc}"
        raise UploadError(400, "bad_multipart", message) from None
    except BaseException:
        _discard(receiver)
        raise
    receiver.close()
    if receiver.filename is None:
        _discard(receiver)
        raise UploadError(400, "missing_file", "no file: send it in a form field named 'file'")
    if receiver.size == 0:
        _discard(receiver)
        raise UploadError(400, "empty_file", f"{receiver.filename} is empty")
    return Received(receiver.path, receiver.filename, receiver.size)


def _too_large(limit: int) -> str:
    return f"the file is over the upload limit of {limit} bytes"


def _discard(receiver: _FileReceiver) -> None:
    receiver.close()
    receiver.path.unlink(missing_ok=True)


def submit_received(
    received: Received, storage: Storage, priority: Priority = "normal"
) -> Manifest:
    """Store the upload under a key we choose, write the manifest, publish the probe task: the
    uploader's own ``submit``, with the browser's file name travelling beside our temp path."""
    try:
        return submit(received.path, storage, filename=received.filename, priority=priority)
    except BrokerUnavailable as exc:
        raise UploadError(503, "broker_unavailable", str(exc)) from exc
    except Busy as exc:
        raise UploadError(503, "busy", str(exc)) from exc
    except SubmitError as exc:
        raise UploadError(413, "too_large", str(exc)) from exc


def remove(received: Received) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(received.path)
