"""``encodeq dlq ...``: list, show, stats, replay, purge, export, import, history.

Exit codes: 0 done; 1 something asked for is not there or did not happen (an id that vanished, a
copy the broker returned, a refused purge); 2 a usage error; 130 stopped by Ctrl-C (cleanly:
whatever was not confirmed is still in the queue).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from config.settings import get_settings
from config.topology import DEAD_LETTER_QUEUE_NAME, PARKED_QUEUE_NAME
from core.failures import FailureRecord, load_failure
from core.manifest import JobStore
from core.storage import Storage
from dlq_inspector import audit
from dlq_inspector.broker import connect
from dlq_inspector.browse import peek
from dlq_inspector.explain import Row, load_records, row
from dlq_inspector.export import ExportWriter, publish_into, write_export
from dlq_inspector.filters import Selection, parse_duration
from dlq_inspector.message import DeadLetter
from dlq_inspector.purge import purge as purge_messages
from dlq_inspector.replay import REPLAY_QUEUES, ReplayPolicy, allowed_queues, plan, target_of
from dlq_inspector.stats import group
from dlq_inspector.stream import Mover, Outcome
from dlq_inspector.validate import CheckedFile, check_export

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
out = Console()
if not out.is_terminal:
    out.width = 240  # a pipe or a file: no wrapping of ids and task names at 80 columns
err = Console(stderr=True, soft_wrap=True)

# --- shared options ----------------------------------------------------------------------------
#: The queues the inspector reads, moves out of and imports into. Not the work queues: holding a
#: quorum queue's deliveries counts against their delivery limit, and importing there would
#: skip the DLQ's checks.
INSPECTED_QUEUES = (DEAD_LETTER_QUEUE_NAME, PARKED_QUEUE_NAME)


def inspected_queue(name: str) -> str:
    if name not in INSPECTED_QUEUES:
        allowed = " and ".join(INSPECTED_QUEUES)
        raise typer.BadParameter(f"{name!r}: the inspector works on {allowed}")
    return name


JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
QueueOpt = Annotated[
    str,
    typer.Option("--queue", help="encodeq.dlq or encodeq.dlq.parked.", callback=inspected_queue),
]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Task name (glob).")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="rejected, delivery_limit, expired...")
]
JobOpt = Annotated[str | None, typer.Option("--job", help="Job id.")]
ErrorTypeOpt = Annotated[
    str | None, typer.Option("--error-type", help="Exception type or error code.")
]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Died longer ago than this: 30s, 10m, 2h, 1d.")
]
IdsArg = Annotated[list[str] | None, typer.Argument(help="Message ids from `list`.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every message in the queue.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def selection(
    ids: list[str] | None,
    everything: bool,
    task: str | None,
    reason: str | None,
    job: str | None,
    error_type: str | None,
    older_than: str | None,
) -> Selection:
    try:
        age = parse_duration(older_than) if older_than else None
    except ValueError as exc:
        fail(str(exc), code=2)
    return Selection(
        ids=set(ids or []),
        everything=everything,
        task=task,
        reason=reason,
        job=job,
        error_type=error_type,
        older_than=age,
    )


def select(
    messages: list[DeadLetter], chosen: Selection
) -> tuple[list[DeadLetter], dict[str, FailureRecord]]:
    """The chosen messages and the failure records of those that have one."""
    if chosen.needs_records:
        records = load_records(messages)
        picked = [m for m in messages if chosen.matches(m, records.get(m.key))]
        return picked, records
    picked = [m for m in messages if chosen.matches(m)]
    return picked, load_records(picked)


def missing_ids(chosen: Selection, found: list[DeadLetter]) -> list[str]:
    present = {m.id for m in found}
    return sorted(i for i in chosen.ids if i not in present)


@contextmanager
def stoppable() -> Iterator[threading.Event]:
    """Ctrl-C (and SIGTERM) set a flag the engine checks between messages, instead of raising
    in the middle of a publish: what was confirmed is acked, the rest stays in the queue."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich bar on a terminal (bulk moves), nothing otherwise."""
    with Progress(
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=False,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=min(done, total), total=total)

        yield update


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "scanned": outcome.scanned,
        "moved": outcome.total,
        "targets": dict(outcome.counts),
        "ids": [i for i, _ in outcome.moved],
        "failed": [{"id": i, "why": w} for i, w in outcome.failed],
        "interrupted": outcome.interrupted,
        "seconds": round(outcome.seconds, 3),
    }


# --- list / show / stats -------------------------------------------------------------------------
def rows_for(queue: str, chosen: Selection) -> list[Row]:
    with connect() as conn:
        messages = peek(conn, queue)
    picked, records = select(messages, chosen)
    return [row(m, records.get(m.key)) for m in picked]


@app.command("list")
def list_(
    task: TaskOpt = None,
    reason: ReasonOpt = None,
    job: JobOpt = None,
    error_type: ErrorTypeOpt = None,
    older_than: OlderOpt = None,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """One row per message: id, task, job, reason, queue, when, why, replays. Changes nothing."""
    chosen = selection(None, True, task, reason, job, error_type, older_than)
    rows = rows_for(queue, chosen)
    if as_json:
        print_json([r.as_json() for r in rows])
        return
    table = Table("id", "task", "job", "reason", "died in", "when", "why", "replays")
    for r in rows:
        table.add_row(
            r.id,
            r.task or "-",
            r.job_id or "-",
            r.reason,
            r.queue,
            r.died_at or "-",
            r.why,
            str(r.replays),
        )
    out.print(table)
    out.print(f"{len(rows)} message(s) in {queue}", highlight=False)


def _manifest_state(job_id: str | None) -> dict[str, Any] | None:
    if not job_id or not job_id.isalnum():
        return None
    manifest = JobStore(Storage()).load(job_id)
    if manifest is None:
        return {"job_id": job_id, "state": None, "note": "no manifest"}
    return {
        "job_id": job_id,
        "state": manifest.state,
        "error": manifest.error.model_dump() if manifest.error else None,
        "source": manifest.source.uri,
        "renditions": {r.name: r.state for r in manifest.renditions},
        "updated_at": manifest.updated_at,
    }


def _body_view(message: DeadLetter) -> dict[str, Any]:
    try:
        return {"text": message.body.decode("utf-8"), "bytes": len(message.body)}
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(message.body).decode(), "bytes": len(message.body)}


def describe(message: DeadLetter, record: FailureRecord | None) -> dict[str, Any]:
    target = target_of(message)
    return {
        **row(message, record).as_json(),
        "celery_headers": message.celery_headers(),
        "args": message.args,
        "kwargs": message.kwargs,
        "decode_error": message.decode_error,
        "x_death": [d.as_json() for d in message.deaths],
        "first_death": {
            k: message.headers.get(f"x-first-death-{k}") for k in ("queue", "reason", "exchange")
        },
        "properties": message.properties,
        "body": _body_view(message),
        "replay_target": target.label if target else None,
        "failure": record.model_dump(mode="json") if record else None,
        "job": _manifest_state(message.job_id),
    }


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="A message id from `list`.")],
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one message: headers, args, x-death history, failure record, job state."""
    with connect() as conn:
        found = [m for m in peek(conn, queue) if m.id == message_id]
    if not found:
        fail(f"no message {message_id} in {queue} (replayed or purged since it was listed?)")
    message = found[0]
    record = load_failure(Storage(), message.key)
    doc = {**describe(message, record), "copies": len(found)}
    if as_json:
        print_json(doc)
        return
    out.print(f"[bold]{doc['id']}[/]  {doc['task'] or '(no task)'}  job {doc['job_id'] or '-'}")
    out.print(f"why: {doc['why']}", highlight=False, markup=False)
    out.print(f"replays: {doc['replays']}   replay target: {doc['replay_target']}")
    out.print_json(
        data={k: doc[k] for k in ("celery_headers", "args", "kwargs", "x_death")}, default=str
    )
    if record is not None and record.traceback_tail:
        out.print("[bold]traceback (tail)[/]")
        out.print(record.traceback_tail, markup=False, highlight=False)
    if doc["job"]:
        out.print_json(data={"job": doc["job"]}, default=str)


@app.command()
def stats(
    task: TaskOpt = None,
    reason: ReasonOpt = None,
    job: JobOpt = None,
    error_type: ErrorTypeOpt = None,
    older_than: OlderOpt = None,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Deaths grouped by task + reason + exception type: count, oldest, newest. Changes nothing."""
    chosen = selection(None, True, task, reason, job, error_type, older_than)
    groups = group(rows_for(queue, chosen))
    if as_json:
        print_json([g.as_json() for g in groups])
        return
    table = Table("count", "task", "reason", "exception", "oldest", "newest", "why (example)")
    for g in groups:
        table.add_row(
            str(g.count),
            g.task or "-",
            g.reason,
            g.exc_type or "-",
            g.oldest or "-",
            g.newest or "-",
            g.why,
        )
    out.print(table)


# --- replay --------------------------------------------------------------------------------------
@app.command()
def replay(
    ids: IdsArg = None,
    everything: AllOpt = False,
    task: TaskOpt = None,
    reason: ReasonOpt = None,
    job: JobOpt = None,
    error_type: ErrorTypeOpt = None,
    older_than: OlderOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    rate: Annotated[
        float | None, typer.Option("--rate", min=0.1, help="At most N messages per second.")
    ] = None,
    to: Annotated[
        str | None, typer.Option("--to", help="Send to this queue instead of the origin.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replay even messages replayed too often.")
    ] = False,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Send messages back where they were going (from x-death), or --to a queue; byte for byte,
    with publisher confirms, acking each DLQ copy only after its new copy was confirmed."""
    chosen = selection(ids, everything, task, reason, job, error_type, older_than)
    if chosen.is_empty:
        fail("say which messages: ids, --all, or filters (see `encodeq dlq list --help`)", code=2)
    if to is not None and to not in REPLAY_QUEUES:
        fail(f"--to {to}: replays go only to {allowed_queues()}", code=2)
    settings = get_settings()
    storage = Storage()
    cache: dict[str, FailureRecord | None] = {}

    def record_for(key: str) -> FailureRecord | None:
        if key not in cache:
            cache[key] = load_failure(storage, key)
        return cache[key]

    with connect() as conn:
        policy = ReplayPolicy(
            conn,
            chosen,
            settings.dlq_max_replays,
            to_queue=to,
            force=force,
            record_for=record_for,
        )
        if dry_run or chosen.ids:
            messages = peek(conn, queue)
            gone = missing_ids(chosen, messages)
            if gone:
                fail(f"no message {', '.join(gone)} in {queue} (replayed or purged since?)")
        if dry_run:
            the_plan = plan(messages, policy)
            if as_json:
                print_json(the_plan.as_json())
            else:
                _print_plan(the_plan.as_json(), settings.dlq_max_replays)
            return
        with stoppable() as stop, progress_bar("replaying") as update:
            mover = Mover(conn, queue, policy, rate=rate, stop=stop, on_progress=update)
            outcome = mover.run()
    doc = outcome_json(outcome)
    if outcome.total or outcome.failed:
        audit.record(
            "replay",
            doc["ids"],
            dict(outcome.counts),
            storage,
            queue=queue,
            forced=force,
            failed=doc["failed"],
            interrupted=outcome.interrupted,
        )
    if as_json:
        print_json(doc)
    else:
        for label, count in sorted(outcome.counts.items()):
            out.print(f"replayed {count} -> {label}", highlight=False)
        if not outcome.total:
            out.print("nothing replayed")
        for msg_id, reason_text in outcome.failed:
            err.print(f"[red]kept[/] {msg_id}: {reason_text}", highlight=False)
    if outcome.interrupted:
        err.print("[yellow]stopped: the rest is still in the queue")
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _print_plan(doc: dict[str, Any], max_replays: int) -> None:
    out.print(f"dry run: {doc['messages']} message(s) would be replayed", highlight=False)
    for label, count in sorted(doc["targets"].items()):
        missing = " [red](does not exist)[/]" if label in doc["missing_targets"] else ""
        out.print(f"  {count:>6} -> {label}{missing}", highlight=False)
    if doc["parked"]:
        out.print(f"  parked (replayed {max_replays}+ times): {', '.join(doc['parked'])}")
    if doc["expired"]:
        out.print(f"  expired (Celery `expires` passed): {', '.join(doc['expired'])}")
    if doc["no_target"]:
        out.print(f"  no x-death target (use --to): {', '.join(doc['no_target'])}")
    for msg_id, why in doc["refused"].items():
        out.print(f"  [red]kept[/] {msg_id}: {why}", highlight=False)


# --- purge / export / import ---------------------------------------------------------------------
@app.command()
def purge(
    ids: IdsArg = None,
    everything: AllOpt = False,
    task: TaskOpt = None,
    reason: ReasonOpt = None,
    job: JobOpt = None,
    error_type: ErrorTypeOpt = None,
    older_than: OlderOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    no_export: Annotated[
        bool, typer.Option("--no-export", help="Do not write an export first.")
    ] = False,
    export_file: Annotated[
        Path | None,
        typer.Option(
            "--export-file",
            help="Where the export goes (default: a new file in the private folder dlq-exports).",
        ),
    ] = None,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Delete messages for good, after writing them to an export file (unless --no-export)."""
    chosen = selection(ids, everything, task, reason, job, error_type, older_than)
    if chosen.is_empty:
        fail("say which messages: ids, --all, or filters", code=2)
    if not yes and not sys.stdin.isatty():
        fail("refusing to purge without --yes when not on a terminal")
    with connect() as conn:
        picked, _ = select(peek(conn, queue), chosen)
        gone = missing_ids(chosen, picked)
        if gone:
            fail(f"no message {', '.join(gone)} in {queue} (replayed or purged since?)")
        if not picked:
            print_json(outcome_json(Outcome())) if as_json else out.print("nothing to purge")
            return
        if not yes and not typer.confirm(f"purge {len(picked)} message(s) from {queue}?"):
            fail("not purged")
        writer = None
        if export_file is not None and not no_export:
            writer = ExportWriter(export_file)
        elif not no_export:
            writer = ExportWriter(default_export_path(), exclusive=True)
        try:
            with stoppable() as stop, progress_bar("purging") as update:
                outcome = purge_messages(
                    conn, queue, Counter(m.id for m in picked), writer, stop, update
                )
        finally:
            if writer is not None:
                writer.close()
    doc = {**outcome_json(outcome), "export": str(writer.path) if writer else None}
    if outcome.total:
        audit.record(
            "purge",
            doc["ids"],
            None,
            queue=queue,
            export=doc["export"],
            interrupted=outcome.interrupted,
        )
    if as_json:
        print_json(doc)
    else:
        out.print(f"purged {outcome.total} message(s) from {queue}", highlight=False)
        if writer is not None:
            out.print(f"exported first to {writer.path}", highlight=False)
    if outcome.interrupted:
        raise typer.Exit(130)


def default_export_path() -> Path:
    """A new file in the user's private folder (0700): exports hold message bodies."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = get_settings().private_dir("dlq-exports")
    return folder / f"dlq-purge-{stamp}-{uuid.uuid4().hex[:8]}.jsonl"


@app.command()
def export(
    file: Annotated[Path, typer.Argument(help="JSON lines file to write.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these ids.")] = None,
    task: TaskOpt = None,
    reason: ReasonOpt = None,
    job: JobOpt = None,
    error_type: ErrorTypeOpt = None,
    older_than: OlderOpt = None,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Write messages (all, or filtered) to a lossless JSON lines file. Changes nothing."""
    chosen = selection(ids, True, task, reason, job, error_type, older_than)
    with connect() as conn:
        picked, _ = select(peek(conn, queue), chosen)
    count = write_export(file, picked)
    if as_json:
        print_json({"file": str(file), "count": count, "ids": [m.id for m in picked]})
    else:
        out.print(f"exported {count} message(s) to {file}", highlight=False)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A file written by `export` or `purge`.")],
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Publish every message of an export file back into the DLQ, exactly as exported, once every
    line was checked: a JSON task message for a registered task, sane properties, no user_id, no
    CC/BCC, bounded sizes, an x-death pointing at a work queue. One bad line: nothing published.
    Every attempt is audited, refused or not."""
    checked = CheckedFile()
    routed = returned = 0
    result, problem = "refused", None
    try:
        if not file.is_file():
            problem = f"{file}: no such file"
        else:
            checked = check_export(file)
            if checked.bad:
                problem = f"{len(checked.bad)} bad line(s) in {file}: nothing was imported"
            else:
                result = "failed"
                with connect() as conn:
                    routed, returned = publish_into(conn, queue, checked.messages)
                result = "imported"
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        ids = [m.id for m in checked.messages] if result != "refused" else []
        bad = [b.as_json() for b in checked.bad]
        details = {"result": result, "returned": returned, "bad_lines": bad[:100]}
        try:
            audit.record("import", ids, queue, file=str(file), error=problem, **details)
        except Exception as exc:  # storage down: say so, never pass for audited
            err.print(f"[bold red]error:[/] could not write the audit entry: {exc}")
            problem = problem or "the import was not audited"
    if as_json:
        doc = {"file": str(file), "result": result, "imported": routed, "returned": returned}
        print_json({**doc, "ids": ids, "bad_lines": bad, "error": problem})
    else:
        for line in checked.bad:
            err.print(f"[red]line {line.number}:[/] {line.reason}", highlight=False)
        if result == "imported":
            out.print(f"imported {routed} message(s) into {queue}", highlight=False)
    if problem:
        fail(problem)
    if returned:
        fail(f"{returned} message(s) were not routed to {queue}")


@app.command()
def history(
    limit: Annotated[int | None, typer.Option("--limit", help="Only the last N.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every replay, purge and import: when, who, which ids, where to."""
    entries = audit.history(limit=limit)
    if as_json:
        print_json(entries)
        return
    table = Table("when", "who", "action", "count", "target", "ids")
    for e in entries:
        ids = e.get("ids") or []
        shown = ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")
        table.add_row(
            str(e.get("time")),
            str(e.get("who")),
            str(e.get("action")),
            str(e.get("count")),
            json.dumps(e.get("target")),
            shown,
        )
    out.print(table)


__all__ = ["app"]
