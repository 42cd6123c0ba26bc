"""Checking an export file before ``import`` publishes any of it.

An export file is input from outside the broker: whoever wrote it chose every byte, ``x-death``
included, and the DLQ will replay what it says. So ``import`` publishes a file only when every line
is a message this system could itself have dead-lettered: a Celery protocol 2 task message in JSON
(never pickle) for a task the workers run, with AMQP properties of the right types and ranges, no
``user_id`` (the broker accepts it only from the original publisher), no headers that route copies
elsewhere (``CC``/``BCC``), bounded sizes, and an ``x-death`` that, if present, points at a work
queue. One bad line and nothing is published.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import amqp

from config.settings import get_settings
from config.topology import REPLAY_COUNT_HEADER, TASK_ROUTES
from dlq_inspector.export import FORMAT_VERSION, from_doc
from dlq_inspector.message import PROPERTY_NAMES, DeadLetter
from dlq_inspector.replay import ROUTING_HEADERS, target_of, target_refusal

#: Registered task names: the routing table's keys (every task a worker runs has a route).
TASK_NAMES = frozenset(TASK_ROUTES)
#: Bounds on one message. Celery's own messages for this project are a few hundred bytes of body
#: and a few kilobytes of headers (argsrepr is capped at 1 KiB, x-death has one entry per queue and
#: reason); the header block must also fit one AMQP frame (128 KiB by default).
MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_BODY_BYTES = 1024 * 1024
MAX_PROPERTIES_BYTES = 32 * 1024
MAX_HEADERS = 64
MAX_DEPTH = 8
#: AMQP short strings (property values, header names) are at most 255 bytes.
SHORTSTR = 255
LINE_KEYS = frozenset({"v", "id", "body", "properties", "headers"})
STRING_PROPERTIES = ("correlation_id", "message_id", "type", "app_id", "reply_to", "cluster_id")
EMBED_KEYS = frozenset({"callbacks", "errbacks", "chain", "chord"})
#: An imported message may carry an ``eta`` (a retry's countdown that passed) at most this far
#: ahead: further, a worker would hold it unacked instead of running it.
ETA_SLACK_S = 60.0


def _header_time(value: Any) -> datetime | None:
    """A Celery time header (ISO 8601, naive means UTC), or None when it is not one."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _expired(expires: Any) -> bool:
    when = _header_time(expires)
    return when is None or when < datetime.now(UTC)


def _within_limits(timelimit: Any) -> bool:
    """``[hard, soft]`` seconds, each a number no larger than the workers' own."""
    limit = get_settings().hard_time_limit_s
    return (
        isinstance(timelimit, list)
        and len(timelimit) == 2
        and all(isinstance(v, int | float) and 0 < v <= limit for v in timelimit)
    )


def _due_soon(eta: Any) -> bool:
    when = _header_time(eta)
    return when is not None and when <= datetime.now(UTC) + timedelta(seconds=ETA_SLACK_S)


_DIGITS = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True)
class BadLine:
    number: int
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"line": self.number, "reason": self.reason}


@dataclass
class CheckedFile:
    """Every message of a file, or the lines that are not acceptable (then import nothing)."""

    messages: list[DeadLetter] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)


def depth(value: Any) -> int:
    """How deeply tables and arrays nest in a value (a scalar is 0)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def _short(value: Any) -> bool:
    return isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) <= SHORTSTR


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def property_problems(properties: dict[str, Any]) -> list[str]:
    problems = []
    if "user_id" in properties:
        problems.append("a user_id property (the broker accepts it only from its publisher)")
    content_type = properties.get("content_type")
    if content_type != "application/json":
        problems.append(f"content type {content_type!r}: only application/json is imported")
    if properties.get("content_encoding", "utf-8") != "utf-8":
        problems.append(f"content encoding {properties['content_encoding']!r}: JSON is utf-8")
    if "delivery_mode" in properties:
        mode = properties["delivery_mode"]
        if not _is_int(mode) or mode not in (1, 2):
            problems.append(f"delivery_mode {mode!r}: 1 (transient) or 2 (persistent)")
    if "priority" in properties:
        priority = properties["priority"]
        if not _is_int(priority) or not 0 <= priority <= 255:
            problems.append(f"priority {priority!r}: an integer from 0 to 255")
    if "expiration" in properties:
        expiration = properties["expiration"]
        if not isinstance(expiration, str) or not _DIGITS.fullmatch(expiration):
            problems.append(f"expiration {expiration!r}: a string of milliseconds (digits)")
    if "timestamp" in properties:
        stamp = properties["timestamp"]
        if not (_is_int(stamp) and 0 <= stamp < 2**64):
            problems.append(f"timestamp {stamp!r}: whole seconds since the epoch")
    for name in STRING_PROPERTIES:
        if name in properties and not _short(properties[name]):
            problems.append(f"{name} is not a string of at most {SHORTSTR} bytes")
    return problems


def header_problems(headers: dict[str, Any]) -> list[str]:
    problems = []
    if len(headers) > MAX_HEADERS:
        problems.append(f"{len(headers)} headers (at most {MAX_HEADERS})")
    if depth(headers) > MAX_DEPTH:
        problems.append(f"headers nest deeper than {MAX_DEPTH} levels")
    if any(not name or not _short(name) for name in headers):
        problems.append(f"a header name is not a string of 1 to {SHORTSTR} bytes")
    for name in ROUTING_HEADERS:
        if name in headers:
            problems.append(f"a {name} header (it routes copies to the queues it names)")
    eta = headers.get("eta")
    if eta not in (None, "") and not _due_soon(eta):
        # a worker holds an ETA message unacked until it is due: far off, it sits there until
        # the broker's consumer timeout closes the channel, with every task in flight on it
        problems.append(f"eta {eta!r} is not a time within {ETA_SLACK_S:.0f}s from now")
    expires = headers.get("expires")
    if expires not in (None, "") and _expired(expires):
        # a worker acks an expired task without running it: imported, it would vanish
        problems.append(f"expires {expires!r} has passed (a worker would drop it unrun)")
    timelimit = headers.get("timelimit")
    if timelimit not in (None, [None, None]) and not _within_limits(timelimit):
        # the message's own limits replace the worker's: none, or huge, and nothing stops it
        problems.append(f"timelimit {timelimit!r} is not within the workers' own limits")
    task = headers.get("task")
    if task is None:
        problems.append("no task header: not a Celery task message")
    elif task not in TASK_NAMES:
        problems.append(f"task {task!r} is not a registered encodeq task")
    task_id = headers.get("id")
    if not _short(task_id) or not task_id:
        problems.append("the id header is not a task id (a string of 1 to 255 bytes)")
    replays = headers.get(REPLAY_COUNT_HEADER, 0)
    if not _is_int(replays) or replays < 0:
        problems.append(f"{REPLAY_COUNT_HEADER} {replays!r} is not a count")
    deaths = headers.get("x-death")
    if deaths is not None and not (
        isinstance(deaths, list) and all(isinstance(d, dict) for d in deaths)
    ):
        problems.append("x-death is not a list of tables")
    return problems


def body_problems(body: bytes) -> list[str]:
    """A Celery protocol 2 body: ``[args (list), kwargs (table), embed (table)]`` in JSON."""
    if len(body) > MAX_BODY_BYTES:
        return [f"a body of {len(body)} bytes (at most {MAX_BODY_BYTES})"]
    try:
        decoded = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return [f"the body is not JSON: {str(exc)[:120]}"]
    if not (
        isinstance(decoded, list)
        and len(decoded) == 3
        and isinstance(decoded[0], list)
        and isinstance(decoded[1], dict)
        and isinstance(decoded[2], dict)
    ):
        return ["the body is not a Celery task message ([args, kwargs, embed])"]
    if not set(decoded[2]) <= EMBED_KEYS:
        extra = sorted(set(decoded[2]) - EMBED_KEYS)
        return [f"the body's embed has unknown keys {extra} (Celery's: {sorted(EMBED_KEYS)})"]
    # Our tasks never chain: a callback, errback, chain or chord would have a worker publish
    # whatever signature it holds, to any exchange or queue, after the task ran.
    linked = sorted(key for key, value in decoded[2].items() if value)
    if linked:
        return [f"the body links other tasks ({', '.join(linked)}): our tasks never do"]
    return []


def message_problems(message: DeadLetter) -> list[str]:
    """Everything that keeps ``message`` out of the broker (empty: it may be imported)."""
    problems = [
        *property_problems(message.properties),
        *header_problems(message.headers),
        *body_problems(message.body),
    ]
    if not problems:
        try:
            size = len(
                amqp.Message(message.body, **message.copy_as_is()[1])._serialize_properties()
            )
        except Exception as exc:  # a value AMQP has no type for, a too-long table key...
            problems.append(f"the properties do not serialise as AMQP: {exc}")
        else:
            if size > MAX_PROPERTIES_BYTES:
                limit = MAX_PROPERTIES_BYTES
                problems.append(f"{size} bytes of properties and headers (at most {limit})")
    if not problems and message.deaths:
        target = target_of(message)
        if target is None:
            problems.append("x-death names no queue it was going to")
        elif (why := target_refusal(target)) is not None:
            problems.append(f"its x-death says {why}: a replay would send it there")
    return problems


def parse_line(line: str) -> tuple[DeadLetter | None, str | None]:
    """An export line -> (message, None), or (None, why it is not one)."""
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON: {str(exc)[:120]}"
    if not isinstance(doc, dict):
        return None, "not an export line (a JSON object)"
    if doc.get("v", FORMAT_VERSION) != FORMAT_VERSION:
        return None, f"export format {doc.get('v')!r}, this inspector reads {FORMAT_VERSION}"
    if unknown := sorted(set(doc) - LINE_KEYS):
        return None, f"unknown fields {unknown}"
    if not isinstance(doc.get("body"), str):
        return None, "no body"
    if not isinstance(doc.get("properties", {}), dict):
        return None, "properties are not a table"
    if not isinstance(doc.get("headers", {}), dict):
        return None, "headers are not a table"
    if unknown := sorted(set(doc.get("properties") or {}) - set(PROPERTY_NAMES)):
        return None, f"unknown properties {unknown}"
    try:
        base64.b64decode(doc["body"], validate=True)
        return from_doc(doc), None
    except (binascii.Error, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"not an export line: {str(exc)[:120]}"


def check_export(path: Path) -> CheckedFile:
    """Read and check every line of an export file (blank lines are skipped)."""
    checked = CheckedFile()
    with path.open(encoding="utf-8", errors="surrogateescape") as handle:
        number = 0
        while line := handle.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(line) > MAX_LINE_BYTES:
                rest = line
                while rest and not rest.endswith("\n"):  # never hold an overlong line whole
                    rest = handle.readline(MAX_LINE_BYTES)
                checked.bad.append(BadLine(number, f"longer than {MAX_LINE_BYTES} characters"))
                continue
            if not line.strip():
                continue
            message, why = parse_line(line)
            if message is None:
                checked.bad.append(BadLine(number, why or "unreadable"))
                continue
            if problems := message_problems(message):
                checked.bad.append(BadLine(number, "; ".join(problems)))
                continue
            checked.messages.append(message)
    return checked
