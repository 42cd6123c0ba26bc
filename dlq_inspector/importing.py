"""``import``: publish an export file back into the DLQ, exactly as exported, once every line was
checked (validate.py); one bad line and nothing is published. Every attempt is audited, refused,
failed or done: an import is input from outside the broker, so who brought what in must be known.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp

from core.storage import Storage
from dlq_inspector import audit
from dlq_inspector.broker import connect, open_channel
from dlq_inspector.message import DeadLetter
from dlq_inspector.validate import CheckedFile, check_export

CONFIRM_TIMEOUT_S = 30.0
#: Bad lines an audit entry lists at most (the command's own output lists them all).
AUDITED_BAD_LINES = 100


@dataclass
class ImportResult:
    """What an import did: ``result`` is ``refused`` (nothing published), ``failed`` (publishing
    broke off) or ``imported``; ``problem`` says why it is not a success, if it is not."""

    file: Path
    queue: str
    checked: CheckedFile = field(default_factory=CheckedFile)
    result: str = "refused"
    routed: int = 0
    returned: int = 0
    problem: str | None = None
    #: Why the audit entry could not be written (storage down); the import then is no success.
    audit_error: str | None = None

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.checked.messages] if self.result != "refused" else []

    def as_json(self) -> dict[str, Any]:
        return {
            "file": str(self.file),
            "result": self.result,
            "imported": self.routed,
            "returned": self.returned,
            "ids": self.ids,
            "bad_lines": [b.as_json() for b in self.checked.bad],
            "error": self.problem,
        }


def import_file(file: Path, queue: str, storage: Storage | None = None) -> ImportResult:
    """Check ``file``, publish it into ``queue`` if every line passed, audit the attempt.

    An exception while publishing is audited (as ``failed``) and raised; a failed audit is
    reported in ``audit_error`` (or as a note on the exception being raised).
    """
    attempt = ImportResult(file, queue)
    try:
        _check_and_publish(attempt)
    except BaseException as exc:
        if isinstance(exc, Exception):
            attempt.problem = f"{type(exc).__name__}: {exc}"
        _audit(attempt, storage)
        if attempt.audit_error:
            exc.add_note(f"could not write the audit entry: {attempt.audit_error}")
        raise
    _audit(attempt, storage)
    return attempt


def _check_and_publish(attempt: ImportResult) -> None:
    if not attempt.file.is_file():
        attempt.problem = f"{attempt.file}: no such file"
        return
    attempt.checked = check_export(attempt.file)
    if attempt.checked.bad:
        bad = len(attempt.checked.bad)
        attempt.problem = f"{bad} bad line(s) in {attempt.file}: nothing was imported"
        return
    attempt.result = "failed"
    with connect() as conn:
        routed, returned = publish_into(conn, attempt.queue, attempt.checked.messages)
    attempt.routed, attempt.returned = routed, returned
    attempt.result = "imported"


def _audit(attempt: ImportResult, storage: Storage | None) -> None:
    """Write the attempt's audit entry; never let a storage outage pass for audited."""
    bad = [b.as_json() for b in attempt.checked.bad]
    try:
        audit.record(
            "import",
            attempt.ids,
            attempt.queue,
            storage,
            file=str(attempt.file),
            error=attempt.problem,
            result=attempt.result,
            returned=attempt.returned,
            bad_lines=bad[:AUDITED_BAD_LINES],
        )
    except Exception as exc:  # storage down: say so, never pass for audited
        attempt.audit_error = str(exc)
        attempt.problem = attempt.problem or "the import was not audited"


def publish_into(conn: Any, queue: str, messages: Iterable[DeadLetter]) -> tuple[int, int]:
    """Publish each message unchanged into ``queue`` with confirms; (routed, returned)."""
    channel = open_channel(conn)
    channel.confirm_select()
    pending: set[int] = set()
    nacked: list[int] = []
    returned: list[str] = []

    def on_ack(seq: int, multiple: bool) -> None:
        done = {s for s in pending if s <= seq} if multiple else {seq}
        pending.difference_update(done)

    def on_nack(seq: int, multiple: bool) -> None:
        nacked.append(seq)
        on_ack(seq, multiple)

    def on_return(exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        returned.append(routing_key)

    channel.events["basic_ack"].add(on_ack)
    channel.events["basic_nack"].add(on_nack)
    channel.events["basic_return"].add(on_return)
    sent = 0
    try:
        for message in messages:
            body, props = message.copy_as_is()
            sent += 1
            pending.add(sent)
            channel.basic_publish(
                amqp.Message(body, **props), exchange="", routing_key=queue, mandatory=True
            )
        deadline = time.monotonic() + CONFIRM_TIMEOUT_S
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(pending)} imported messages were never confirmed")
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1.0)
    finally:
        channel.close()
    if nacked:
        raise RuntimeError(f"the broker refused {len(nacked)} imported messages (nack)")
    return sent - len(returned), len(returned)
