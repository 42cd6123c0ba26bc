"""The export file: a DLQ as JSON lines, lossless, so it can be saved, moved and restored.

One line per message: ``{"id", "body" (base64), "properties", "headers"}``. The body is kept byte
for byte. Header and property values keep their AMQP types as py-amqp reads them: JSON's own
types for strings, integers, floats, booleans, null, tables and arrays, and tagged objects for the
rest (``{"$bytes": base64}``, ``{"$timestamp": epoch seconds}``, ``{"$decimal": "1.50"}``; a table
with a key starting with ``$`` is wrapped as ``{"$table": {...}}``). Importing publishes each
message as it was, x-death included, so the ids stay the same (importing.py); validate.py
checks a file before anything of it is published. Export files hold message bodies and
tracebacks' subjects: they are created 0600.
"""

from __future__ import annotations

import base64
import calendar
import errno
import json
import os
import stat
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from dlq_inspector.message import PROPERTY_NAMES, DeadLetter

FORMAT_VERSION = 1


def encode_value(value: Any) -> Any:
    """An AMQP field value -> JSON, losing nothing py-amqp can tell apart."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, datetime):
        return {"$timestamp": calendar.timegm(value.utctimetuple())}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, dict):
        table = {str(k): encode_value(v) for k, v in value.items()}
        return {"$table": table} if any(k.startswith("$") for k in table) else table
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    raise TypeError(f"no AMQP field type for {type(value).__name__}")


def decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((tag, inner),) = value.items()
        if tag == "$bytes":
            return base64.b64decode(inner)
        if tag == "$timestamp":
            # py-amqp's own reading of an AMQP timestamp: a naive UTC datetime.
            return datetime.fromtimestamp(int(inner), tz=UTC).replace(tzinfo=None)
        if tag == "$decimal":
            return Decimal(inner)
        if tag == "$table":
            return {k: decode_value(v) for k, v in inner.items()}
    return {k: decode_value(v) for k, v in value.items()}


def to_line(message: DeadLetter) -> str:
    doc = {
        "v": FORMAT_VERSION,
        "id": message.id,
        "body": base64.b64encode(message.body).decode(),
        "properties": {k: encode_value(v) for k, v in message.properties.items()},
        "headers": encode_value(message.headers),
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n"


def from_line(line: str) -> DeadLetter:
    return from_doc(json.loads(line))


def from_doc(doc: dict[str, Any]) -> DeadLetter:
    """One parsed export line -> the message (properties not named by AMQP are dropped)."""
    properties = {
        k: decode_value(v) for k, v in (doc.get("properties") or {}).items() if k in PROPERTY_NAMES
    }
    headers = decode_value(doc.get("headers") or {})
    if isinstance(headers, dict) and set(headers) == {"$table"}:
        headers = headers["$table"]
    return DeadLetter(body=base64.b64decode(doc["body"]), properties=properties, headers=headers)


class ExportWriter:
    """Appends messages to a file; ``sync`` makes them durable before anything is acked.

    The file is created 0600 (a file that was there already is made 0600 too); ``exclusive``
    refuses to reuse an existing name (a default name, which nobody asked to overwrite).
    """

    def __init__(self, path: Path, exclusive: bool = False) -> None:
        self.path = path
        self.count = 0
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_EXCL if exclusive else os.O_TRUNC)
        fd = os.open(path, flags, 0o600)
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
                os.fchmod(fd, 0o600)
            self._file: IO[str] = os.fdopen(fd, "w", encoding="utf-8")
        except BaseException:
            os.close(fd)
            raise

    def write(self, message: DeadLetter) -> None:
        self._file.write(to_line(message))
        self.count += 1

    def sync(self) -> None:
        self._file.flush()
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:  # a pipe or /dev/null: nothing to make durable
            if exc.errno != errno.EINVAL:
                raise

    def close(self) -> None:
        self.sync()
        self._file.close()


def write_export(path: Path, messages: Iterable[DeadLetter]) -> int:
    writer = ExportWriter(path)
    try:
        for message in messages:
            writer.write(message)
    finally:
        writer.close()
    return writer.count
