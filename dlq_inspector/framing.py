"""Publishing many messages in few writes: AMQP frames packed into one buffer, flushed in bulk.

py-amqp writes each published message with its own ``sendall``; at thousands of messages a
second that system call is the largest single cost. Here the frames (method, content header,
body chunks: the AMQP 0-9-1 layout py-amqp's own frame writer produces, with its serialisation of
the properties) are appended to a buffer that is written out when it grows large and always before
we wait for anything from the broker. Single-threaded use only, like the connection itself.
"""

from __future__ import annotations

from struct import pack, unpack_from
from typing import Any

import amqp
from amqp import spec
from amqp.serialization import dumps

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_END = 1, 2, 3, b"\xce"
#: Flush once this many bytes are waiting.
FLUSH_BYTES = 256 * 1024


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


class PublishBuffer:
    """``basic.publish`` frames for one channel, buffered; ``flush`` sends them."""

    def __init__(self, connection: Any, channel_id: int) -> None:
        self.transport = connection.transport
        self.channel_id = channel_id
        self.chunk = connection.frame_max - 8
        self._parts: list[bytes] = []
        self._size = 0
        self._method_cache: dict[tuple[str, str], bytes] = {}

    def publish(
        self,
        body: bytes,
        properties: dict[str, Any],
        exchange: str,
        routing_key: str,
        raw_properties: bytes | None = None,
    ) -> None:
        """Queue one ``mandatory`` publish (flushed when the buffer is full); ``raw_properties``,
        when given, are sent as they are instead of serialising ``properties``."""
        method = self._method_cache.get((exchange, routing_key))
        if method is None:
            args = dumps("Bssbb", (0, exchange, routing_key, True, False))
            method = _frame(FRAME_METHOD, self.channel_id, pack(">HH", *spec.Basic.Publish) + args)
            self._method_cache[(exchange, routing_key)] = method
        props = raw_properties
        if props is None:
            props = amqp.Message(body, **properties)._serialize_properties()
        header = pack(">HHQ", spec.Basic.Publish[0], 0, len(body)) + props
        parts = [method, _frame(FRAME_HEADER, self.channel_id, header)]
        for start in range(0, len(body), self.chunk):
            parts.append(_frame(FRAME_BODY, self.channel_id, body[start : start + self.chunk]))
        self._parts.extend(parts)
        self._size += sum(len(p) for p in parts)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._parts:
            data = b"".join(self._parts)
            self._parts, self._size = [], 0
            self.transport.write(data)


#: Property flag bits (AMQP 0-9-1 basic class, the order of py-amqp's ``Message.PROPERTIES``).
_CONTENT_TYPE, _CONTENT_ENCODING, _HEADERS, _MORE_FLAGS = 1 << 15, 1 << 14, 1 << 13, 1


def add_int_header(raw: bytes, name: str, value: int) -> bytes | None:
    """Raw properties (as received) with one more signed 32-bit header appended to the table.

    Everything else stays byte for byte, including the AMQP types of the other headers (which
    py-amqp's re-serialisation would normalise). None when the layout is not the plain one (no
    header table, continued flags): the caller then serialises the properties itself.
    """
    if len(raw) < 2:
        return None
    (flags,) = unpack_from(">H", raw, 0)
    if flags & _MORE_FLAGS or not flags & _HEADERS:
        return None
    offset = 2
    for bit in (_CONTENT_TYPE, _CONTENT_ENCODING):
        if flags & bit:
            offset += 1 + raw[offset]
    (length,) = unpack_from(">I", raw, offset)
    key = name.encode()
    entry = bytes([len(key)]) + key + b"I" + pack(">i", value)
    start, end = offset + 4, offset + 4 + length
    return raw[:offset] + pack(">I", length + len(entry)) + raw[start:end] + entry + raw[end:]
