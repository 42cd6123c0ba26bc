"""``encodeq dlq ...``: list, show, stats, replay, purge, export, import, history.

Exit codes: 0 done; 1 something asked for is not there or did not happen (an id that vanished, a
copy the broker returned, a refused purge); 2 a usage error; 130 stopped by Ctrl-C (cleanly:
whatever was not confirmed is still in the queue).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from config.topology import DEAD_LETTER_QUEUE_NAME
from dlq_inspector import audit
from dlq_inspector.cli_options import AllOpt, Filters, IdsArg, JsonOpt, QueueOpt, with_filters
from dlq_inspector.explain import Row
from dlq_inspector.filters import Selection
from dlq_inspector.importing import import_file
from dlq_inspector.operations import MessagesNotFound, inspect_queue, new_export_path
from dlq_inspector.replay import REPLAY_QUEUES, Plan, allowed_queues
from dlq_inspector.stats import group
from dlq_inspector.stream import Outcome
from dlq_inspector.terminal import err, fail, out, print_json, progress_bar, stoppable

# The filter options come from @with_filters (cli_options.py): declared there once.
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


def chosen_by(
    filters: Filters, ids: list[str] | None = None, everything: bool = False
) -> Selection:
    try:
        return filters.selection(ids, everything)
    except ValueError as exc:  # a duration that does not parse
        fail(str(exc), code=2)


def rows_for(queue: str, chosen: Selection) -> list[Row]:
    with inspect_queue(queue) as dlq:
        return dlq.select(chosen).rows()


# --- list / show / stats -------------------------------------------------------------------------
@app.command("list")
@with_filters
def list_(
    filters: Filters, queue: QueueOpt = DEAD_LETTER_QUEUE_NAME, as_json: JsonOpt = False
) -> None:
    """One row per message: id, task, job, reason, queue, when, why, replays. Changes nothing."""
    rows = rows_for(queue, chosen_by(filters, everything=True))
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


@app.command()
def show(
    message_id: Annotated[str, typer.Argument(metavar="ID", help="A message id from `list`.")],
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Everything about one message: headers, args, x-death history, failure record, job state."""
    try:
        with inspect_queue(queue) as dlq:
            doc = dlq.show(message_id)
    except MessagesNotFound:
        fail(f"no message {message_id} in {queue} (replayed or purged since it was listed?)")
    if as_json:
        print_json(doc)
        return
    out.print(f"[bold]{doc['id']}[/]  {doc['task'] or '(no task)'}  job {doc['job_id'] or '-'}")
    out.print(f"why: {doc['why']}", highlight=False, markup=False)
    out.print(f"replays: {doc['replays']}   replay target: {doc['replay_target']}")
    out.print_json(
        data={k: doc[k] for k in ("celery_headers", "args", "kwargs", "x_death")}, default=str
    )
    traceback_tail = (doc["failure"] or {}).get("traceback_tail")
    if traceback_tail:
        out.print("[bold]traceback (tail)[/]")
        out.print(traceback_tail, markup=False, highlight=False)
    if doc["job"]:
        out.print_json(data={"job": doc["job"]}, default=str)


@app.command()
@with_filters
def stats(
    filters: Filters, queue: QueueOpt = DEAD_LETTER_QUEUE_NAME, as_json: JsonOpt = False
) -> None:
    """Deaths grouped by task + reason + exception type: count, oldest, newest. Changes nothing."""
    groups = group(rows_for(queue, chosen_by(filters, everything=True)))
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
RateOpt = Annotated[
    float | None, typer.Option("--rate", min=0.1, help="At most N messages per second.")
]
ToOpt = Annotated[
    str | None, typer.Option("--to", help="Send to this queue instead of the origin.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Replay even messages replayed too often.")]


@app.command()
@with_filters
def replay(
    ids: IdsArg = None,
    everything: AllOpt = False,
    filters: Filters = Filters(),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    rate: RateOpt = None,
    to: ToOpt = None,
    force: ForceOpt = False,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Send messages back where they were going (from x-death), or --to a queue; byte for byte,
    with publisher confirms, acking each DLQ copy only after its new copy was confirmed."""
    chosen = chosen_by(filters, ids, everything)
    if chosen.is_empty:
        fail("say which messages: ids, --all, or filters (see `encodeq dlq list --help`)", code=2)
    if to is not None and to not in REPLAY_QUEUES:
        fail(f"--to {to}: replays go only to {allowed_queues()}", code=2)
    try:
        with inspect_queue(queue) as dlq:
            if dry_run:
                _print_plan(
                    dlq.replay_plan(chosen, to, force), dlq.settings.dlq_max_replays, as_json
                )
                return
            with stoppable() as stop, progress_bar("replaying") as update:
                outcome = dlq.replay(
                    chosen, to=to, force=force, rate=rate, stop=stop, on_progress=update
                )
    except MessagesNotFound as exc:
        fail(str(exc))
    _print_replayed(outcome, as_json)
    if outcome.interrupted:
        err.print("[yellow]stopped: the rest is still in the queue")
        raise typer.Exit(130)
    if outcome.failed:
        raise typer.Exit(1)


def _print_replayed(outcome: Outcome, as_json: bool) -> None:
    if as_json:
        print_json(outcome.as_json())
        return
    for label, count in sorted(outcome.counts.items()):
        out.print(f"replayed {count} -> {label}", highlight=False)
    if not outcome.total:
        out.print("nothing replayed")
    for msg_id, reason_text in outcome.failed:
        err.print(f"[red]kept[/] {msg_id}: {reason_text}", highlight=False)


def _print_plan(plan: Plan, max_replays: int, as_json: bool) -> None:
    doc = plan.as_json()
    if as_json:
        print_json(doc)
        return
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


# --- purge / export / import / history -----------------------------------------------------------
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")]
NoExportOpt = Annotated[bool, typer.Option("--no-export", help="Do not write an export first.")]
ExportFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--export-file",
        help="Where the export goes (default: a new file in the private folder dlq-exports).",
    ),
]


@app.command()
@with_filters
def purge(
    ids: IdsArg = None,
    everything: AllOpt = False,
    filters: Filters = Filters(),
    yes: YesOpt = False,
    no_export: NoExportOpt = False,
    export_file: ExportFileOpt = None,
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Delete messages for good, after writing them to an export file (unless --no-export)."""
    chosen = chosen_by(filters, ids, everything)
    if chosen.is_empty:
        fail("say which messages: ids, --all, or filters", code=2)
    if not yes and not sys.stdin.isatty():
        fail("refusing to purge without --yes when not on a terminal")
    with inspect_queue(queue) as dlq:
        try:
            selected = dlq.select(chosen)
        except MessagesNotFound as exc:
            fail(str(exc))
        if not selected.messages:
            print_json(Outcome().as_json()) if as_json else out.print("nothing to purge")
            return
        if not yes and not typer.confirm(
            f"purge {len(selected.messages)} message(s) from {queue}?"
        ):
            fail("not purged")
        export = None if no_export else export_file or new_export_path(dlq.settings)
        with stoppable() as stop, progress_bar("purging") as update:
            result = dlq.purge(
                selected, export, new_file=export_file is None, stop=stop, on_progress=update
            )
    if as_json:
        print_json(result.as_json())
    else:
        out.print(f"purged {result.outcome.total} message(s) from {queue}", highlight=False)
        if result.export is not None:
            out.print(f"exported first to {result.export}", highlight=False)
    if result.outcome.interrupted:
        raise typer.Exit(130)


@app.command()
@with_filters
def export(
    file: Annotated[Path, typer.Argument(help="JSON lines file to write.")],
    ids: Annotated[list[str] | None, typer.Option("--id", help="Only these ids.")] = None,
    filters: Filters = Filters(),
    queue: QueueOpt = DEAD_LETTER_QUEUE_NAME,
    as_json: JsonOpt = False,
) -> None:
    """Write messages (all, or filtered) to a lossless JSON lines file. Changes nothing."""
    chosen = chosen_by(filters, ids, everything=True)
    with inspect_queue(queue) as dlq:
        picked = dlq.export(chosen, file)
    if as_json:
        print_json({"file": str(file), "count": len(picked), "ids": [m.id for m in picked]})
    else:
        out.print(f"exported {len(picked)} message(s) to {file}", highlight=False)


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
    attempt = import_file(file, queue)
    if attempt.audit_error:
        err.print(f"[bold red]error:[/] could not write the audit entry: {attempt.audit_error}")
    if as_json:
        print_json(attempt.as_json())
    else:
        for line in attempt.checked.bad:
            err.print(f"[red]line {line.number}:[/] {line.reason}", highlight=False)
        if attempt.result == "imported":
            out.print(f"imported {attempt.routed} message(s) into {queue}", highlight=False)
    if attempt.problem:
        fail(attempt.problem)
    if attempt.returned:
        fail(f"{attempt.returned} message(s) were not routed to {queue}")


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
        table.add_row(
            str(e.get("time")),
            str(e.get("who")),
            str(e.get("action")),
            str(e.get("count")),
            json.dumps(e.get("target")),
            _some_ids(e.get("ids") or []),
        )
    out.print(table)


def _some_ids(ids: list[Any]) -> str:
    return ", ".join(ids[:3]) + (f" (+{len(ids) - 3})" if len(ids) > 3 else "")


__all__ = ["app"]
