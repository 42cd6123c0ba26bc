"""The ``encodeq`` command: worker, upload, status, jobs, dlq, demo, watch, serve."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from config.exposure import DefaultSecretError, check_default_secrets
from config.settings import get_settings
from config.topology import CONTROL_QUEUE_NAME, ENCODE_QUEUE_NAME
from core.manifest import JobStore, Manifest, is_job_id
from core.storage import Storage

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help=__doc__, pretty_exceptions_show_locals=False
)
out = Console()
err = Console(stderr=True, soft_wrap=True)

try:
    from dlq_inspector.cli import app as dlq_app

    app.add_typer(dlq_app, name="dlq", help="Inspect, replay and purge the dead-letter queue.")
except ImportError:  # pragma: no cover - the inspector ships with the package
    pass


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(help="Pool processes (competing consumers).")] = 2,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[str | None, typer.Option(help="Celery node name.")] = None,
    queues: Annotated[
        str, typer.Option(help="Work queues to consume, comma-separated (default: both).")
    ] = f"{CONTROL_QUEUE_NAME},{ENCODE_QUEUE_NAME}",
) -> None:
    """Run a Celery worker on the control and encode queues."""
    try:  # a well-known secret off loopback: refuse before connecting (config/exposure.py)
        check_default_secrets(get_settings())
    except DefaultSecretError as exc:
        fail(str(exc))
    from worker.app import app as celery_app

    name = hostname or f"encodeq-{os.getpid()}@%h"
    # Every file the worker and its ffmpeg write (sources, outputs, cache entries) is 0600 and
    # every folder 0700, inherited by the pool processes and their children.
    os.umask(0o077)
    celery_app.worker_main(
        [
            "worker",
            f"--concurrency={concurrency}",
            f"--loglevel={loglevel}",
            f"--hostname={name}",
            f"--queues={queues}",
            # Mingle asks the other workers (over remote control, off by default) for revoked
            # task ids and waits a second for answers that cannot come; gossip is for it too.
            "--without-mingle",
            "--without-gossip",
        ]
    )


class _UploadBar:
    """minio's progress protocol (set_meta/update) driving a Rich bar."""

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress, self.label = progress, label
        self.task = progress.add_task(label, total=None)

    def set_meta(self, object_name: str, total_length: int) -> None:
        self.progress.update(self.task, total=total_length)

    def update(self, length: int) -> None:
        self.progress.advance(self.task, length)


@app.command()
def upload(
    paths: Annotated[list[Path], typer.Argument(help="Video files to encode.")],
    wait: Annotated[bool, typer.Option(help="Follow the jobs until they end.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest(s) as JSON.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds --wait waits at most.")] = 3600.0,
    mode: Annotated[
        str | None,
        typer.Option(
            help="chunked (chunks on many workers, every rung from one decode) or per-rung "
            "(one task per rung); default: chunked for long sources."
        ),
    ] = None,
) -> None:
    """Upload videos and start their jobs; prints job ids. With --wait: exit 0 when every job
    completed, 1 when any failed (or the timeout passed)."""
    from console.follow import follow
    from uploader.submit import SubmitError, check_file, submit

    if mode not in (None, "chunked", "per-rung"):
        fail(f"--mode must be chunked or per-rung, not {mode!r}")
    for path in paths:  # refuse before anything is uploaded
        try:
            check_file(path)
        except SubmitError as exc:
            fail(str(exc))
    storage = Storage()
    jobs = JobStore(storage)
    submitted: list[Manifest] = []
    with Progress(
        "{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err
    ) as bars:
        for path in paths:
            try:
                bar = _UploadBar(bars, f"upload {path.name}")
                manifest = submit(path, storage, progress=bar, mode=mode)  # type: ignore[arg-type]
            except SubmitError as exc:
                fail(str(exc))
            submitted.append(manifest)
            (err if as_json else out).print(manifest.job_id, markup=False, highlight=False)
    ids = [m.job_id for m in submitted]
    if not wait:
        if as_json:
            _print_manifests(submitted)
        return
    final = follow(jobs, ids, timeout, console=err)
    manifests = [final.get(i) or jobs.load(i) or m for i, m in zip(ids, submitted, strict=True)]
    if as_json:
        _print_manifests(manifests)
    else:
        for m in manifests:
            _summary(m)
    timed_out = [i for i in ids if i not in final]
    if timed_out:
        err.print(f"[yellow]timed out after {timeout:.0f}s waiting for {', '.join(timed_out)}")
    raise typer.Exit(0 if all(m.state == "completed" for m in manifests) else 1)


def _print_manifests(manifests: list[Manifest]) -> None:
    docs = [m.model_dump(mode="json") for m in manifests]
    print_json(docs[0] if len(docs) == 1 else docs)


def _summary(m: Manifest) -> None:
    colour = {"completed": "green", "failed": "red"}.get(m.state, "yellow")
    out.print(f"[bold]{m.job_id}[/] [{colour}]{m.state}[/] {m.source.filename}", highlight=False)
    if m.error:
        out.print(f"  [red]{m.error.code}[/]: {m.error.message}", highlight=False)
    if m.master_playlist:
        out.print(f"  master: {m.master_playlist}", highlight=False)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(help="A job id printed by upload.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one job's manifest."""
    manifest = JobStore(Storage()).load(job_id) if is_job_id(job_id) else None
    if manifest is None:
        fail(f"no job {job_id!r}", code=1)
    assert manifest is not None
    if as_json:
        print_json(manifest.model_dump(mode="json"))
        return
    _summary(manifest)
    s = manifest.source
    out.print(f"  source: {s.uri} {s.width}x{s.height} {s.duration or 0:.2f}s", highlight=False)
    table = Table("rendition", "size", "state", "worker", "bandwidth", "playlist")
    for r in manifest.renditions:
        table.add_row(
            r.name,
            f"{r.width}x{r.height}",
            r.state,
            r.worker or "",
            str(r.bandwidth or ""),
            r.playlist or "",
        )
    out.print(table)


@app.command("jobs")
def list_jobs(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List every job, oldest first."""
    manifests = JobStore(Storage()).list()
    if as_json:
        print_json([m.model_dump(mode="json") for m in manifests])
        return
    table = Table("job", "state", "file", "renditions", "error")
    for m in manifests:
        done = sum(r.state == "completed" for r in m.renditions)
        table.add_row(
            m.job_id,
            m.state,
            m.source.filename,
            f"{done}/{len(m.renditions)}",
            m.error.code if m.error else "",
        )
    out.print(table)


@app.command()
def demo(
    workers: Annotated[int, typer.Option(help="Worker processes to start.")] = 2,
    keep: Annotated[bool, typer.Option(help="Leave the sample files in ./encodeq-demo.")] = False,
) -> None:
    """The whole pipeline on this machine: sample video + a broken file, two workers, live view."""
    from console.demo import run_demo

    raise typer.Exit(run_demo(workers=workers, keep=keep, console=out))


@app.command()
def watch(
    job_id: Annotated[str | None, typer.Argument(metavar="[JOB]", help="Only this job.")] = None,
    until_done: Annotated[
        bool, typer.Option(help="Exit when the job (or every job in flight) ended: 0 completed.")
    ] = False,
    once: Annotated[bool, typer.Option(help="Print the current state once and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final state as JSON.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Live view: per job one bar per rendition (worker, fps, speed), queue depths, workers."""
    from console.watch import run_watch
    from worker.app import app as celery_app

    if job_id is not None and not is_job_id(job_id):
        fail(f"no job {job_id!r}", code=1)
    with celery_app.connection_for_read() as connection:
        code = run_watch(
            connection,
            JobStore(Storage()),
            job_id,
            err if as_json else out,
            until_done=until_done,
            once=once,
            as_json=as_json,
            timeout_s=timeout,
        )
    raise typer.Exit(code)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """The HTTP API and live dashboard: uploads, jobs, events, playback, the DLQ. Every API call
    needs ENCODEQ_API_TOKEN; without one a token is generated and a ready link printed."""
    from uploader.web.server import ServeError
    from uploader.web.server import serve as run_server

    try:
        run_server(host, port)
    except ServeError as exc:
        fail(str(exc))


@app.command("minio-setup")
def minio_setup() -> None:
    """With MinIO's root key: create the buckets and the least-privilege users of the workers
    and the dashboard (ENCODEQ_WORKER_S3_*, ENCODEQ_DASHBOARD_S3_*). Compose runs it once."""
    from console.minio_setup import SetupError, setup

    try:
        setup(get_settings(), log=lambda line: out.print(line, markup=False, highlight=False))
    except DefaultSecretError as exc:
        fail(str(exc))
    except SetupError as exc:
        fail(str(exc), code=1)


@app.callback()
def main() -> None:
    """encodeq: upload videos, encode them on competing Celery workers, inspect what died."""
    get_settings()


if __name__ == "__main__":  # pragma: no cover
    app()
