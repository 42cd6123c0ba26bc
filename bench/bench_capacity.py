"""Benchmark: what one job costs, per second of source, as the inputs of a capacity model.

Real jobs end to end, one at a time, on a fleet of 2 workers (``python -m worker --concurrency
1`` each, as ``encodeq up`` starts them), an embedded S3 server and a vhost of the run's own. For
each mode and source length (testsrc2 + tone, 1280x720, 30 fps, the default ladder and x264
preset) it counts what the job did, never how long it took (wall clock on two shared cores is
noise; counts and CPU-seconds are not):

  tasks     published per work queue (Celery's ``task-sent``) and runs per queue and task name
            (``task.finished`` on encodeq.events)
  events    every event on ``encodeq.events`` by routing key, and Celery's own on ``celeryev``
  S3        every request by verb and object kind (the job document and records in ``jobs``
            apart from media), bytes each way, through a meter in front of the S3 server
  CPU       user+sys of the worker process trees, ffmpeg included (/proc, capacity_meters.py)

then fits ``a + b * seconds`` per count over the lengths, and measures apart what a janitor sweep
costs per stored job, what one pass of the chunk watchdog reads, one ffmpeg's CPU for the same
ladder, and what this broker sustains (one quorum queue; a topic exchange like the events one)
(capacity_refs.py), and models 10,000 uploads an hour of 10 minutes each (capacity_model.py:
what is measured, what is a setting, what is assumed; which counts follow the clock, not the
source, and are modelled from their rate). Modes: ``per-rung``; ``chunked``
with this fleet's plan (2 chunks per bulk consumer); ``chunked@4s``, chunks of 4 s: the plan of a
fleet of 75 bulk consumers or more, i.e. the one at scale. Every job runs in the bulk lane, as a
10-minute job does (``ENCODEQ_EXPRESS_MAX_S=0``); the fleet's janitor is idle
(``ENCODEQ_JANITOR_INTERVAL_S``), its sweep measured on its own.

About 10 minutes (3 modes x 10, 30, 60 s); ``--quick``: 8, 16, 24 s.

    python bench/bench_capacity.py --json docs/bench_capacity.json [--media DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, fleet, media recipe

from capacity_meters import (  # noqa: E402
    BusMeter,
    Metrics,
    S3Meter,
    amqp_connections,
    diff,
    dump,
    event_bindings,
    own_cpu,
    tree_cpu,
)
from capacity_model import fit_all, model  # noqa: E402
from capacity_refs import (  # noqa: E402
    broker_references,
    janitor_sweep,
    one_ffmpeg_cpu,
    watchdog_pass,
)
from capacity_report import print_fits, print_model  # noqa: E402
from run_meta import git_revision, run_meta  # noqa: E402
from support.fleet import WorkerFleet  # noqa: E402
from support.stack import Stack, patched_environ  # noqa: E402
from sweep_media import Source, make_source  # noqa: E402

#: mode name -> (the upload's mode, the fleet's extra settings)
MODES: dict[str, tuple[str, dict[str, str]]] = {
    "per-rung": ("per-rung", {}),
    "chunked": ("chunked", {}),
    "chunked@4s": ("chunked", {"ENCODEQ_CHUNK_SECONDS": "4"}),
}
#: Every job in the bulk lane (as a 10-minute one); the janitor measured apart, not mid-job.
FLEET_ENV = {"ENCODEQ_EXPRESS_MAX_S": "0", "ENCODEQ_JANITOR_INTERVAL_S": "86400"}
NEUTRAL_ENV = {"ENCODEQ_WORK_DIR", "ENCODEQ_BUCKET_PREFIX"}
WORKERS, IDLE_S, QUIET_S = 2, 20.0, 2.0


class Meters:
    """The three meters read at once: one flat dict."""

    def __init__(self, s3: S3Meter, bus: BusMeter) -> None:
        self.s3, self.bus = s3, bus
        self.roots: list[int] = []  # the workers' main processes: their trees' CPU counts
        self.last_job = ""  # the last job run (its records are read after the count)

    def read(self) -> Metrics:
        """Every meter now, CPU of the workers' trees included."""
        return {
            **self.s3.read(),
            **self.bus.read(),
            "cpu.workers_s": tree_cpu(self.roots),
            "cpu.bench_process_s": own_cpu(),
            "wall_s": time.monotonic(),
        }


@contextmanager
def counted_stack() -> Iterator[tuple[Stack, S3Meter]]:
    """A vhost and an embedded S3 server of the run's own, ENCODEQ_* pointed at them, and every
    S3 request counted (the meter wraps the running server's WSGI app)."""
    from config.settings import Settings, get_settings

    stack = Stack("bench-capacity", "bench")
    stack.up()
    try:
        with patched_environ(stack.env):
            get_settings.cache_clear()
            meter = S3Meter(Settings().bucket_prefix)
            meter.install(stack.s3._server)  # the running werkzeug server: its handler calls .app
            yield stack, meter
    finally:
        stack.down()


def wait_until(test: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``test``: a job that neither completes nor fails must not hang the bench."""
    deadline = time.monotonic() + timeout
    while not test():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def settle(meters: Meters, timeout: float = 60) -> None:
    """Until every published task has run (the chunk watchdog's last delayed run included) and
    nothing touched S3 or the events for ``QUIET_S``: the job's last request is in the count."""
    last: tuple[float, float] = (-1.0, -1.0)
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = meters.read()
        seen = (now.get("s3.requests", 0.0), now.get("events.total", 0.0))
        if seen != last:
            last, quiet_since = seen, time.monotonic()
        elif meters.bus.settled() and time.monotonic() - quiet_since >= QUIET_S:
            return
        time.sleep(0.25)
    raise TimeoutError("the job did not settle")


def run_job(path: Path, mode: str, meters: Meters, timeout: float) -> Metrics:
    """One job, upload to settled: what it cost, and its plan (read after the count)."""
    from core.manifest import JobStore
    from core.storage import Storage
    from uploader.submit import submit

    before = meters.read()
    job_id = meters.last_job = submit(path, mode=mode).job_id  # type: ignore[arg-type]
    wait_until(lambda: job_id in meters.bus.ended, timeout, f"job {job_id}")
    settle(meters)
    cost = diff(meters.read(), before)
    if meters.bus.ended[job_id] != "job.completed":
        raise RuntimeError(f"job {job_id} failed")
    manifest = JobStore(Storage()).load(job_id)
    assert manifest is not None
    cost["plan.chunks"] = float(manifest.chunks.count if manifest.chunks else 0)
    cost["plan.renditions"] = float(len(manifest.renditions))
    cost["plan.segments"] = float(sum(r.segments or 0 for r in manifest.renditions))
    cost["source.bytes"] = float(path.stat().st_size)
    return cost


def start_fleet(extra: dict[str, str]) -> WorkerFleet:
    """WORKERS workers consuming (FLEET_ENV and ``extra`` on top of the defaults); none left
    running if one fails to start."""
    fleet = WorkerFleet()
    try:
        for i in range(WORKERS):
            fleet.start(f"capacity{i}", env={**FLEET_ENV, **extra})
    except BaseException:
        fleet.stop_all()
        raise
    return fleet


def idle(meters: Meters, seconds: float) -> Metrics:
    """What the fleet costs with no job, per second: heartbeats, CPU, any S3 request."""
    before = meters.read()
    time.sleep(seconds)
    spent = diff(meters.read(), before)
    return {k: round(v / seconds, 6) for k, v in spent.items() if k != "wall_s"}


def fleet_facts(vhost: str, meters: Meters) -> dict[str, Any]:
    """Per worker: broker connections, event subscriptions, idle cost (heartbeats, CPU)."""
    per_second = idle(meters, IDLE_S)
    return {
        "workers": WORKERS,
        "connections_per_worker": amqp_connections(meters.roots) / WORKERS,
        "event_bindings": event_bindings(vhost),
        "idle_per_worker_per_s": {k: round(v / WORKERS, 6) for k, v in per_second.items()},
    }


def run_mode(
    name: str,
    sources: dict[float, Path],
    meters: Meters,
    args: argparse.Namespace,
    on_fleet: Callable[[], None] = lambda: None,
) -> dict[str, Metrics]:
    """Every length in one mode on a fleet of its own settings, after an uncounted warm-up (and
    ``on_fleet``, which measures the warm fleet)."""
    mode, extra = MODES[name]
    fleet = start_fleet(extra)
    meters.roots = [w.pid for w in fleet.workers]
    try:
        run_job(sources[min(sources)], mode, meters, args.job_timeout)  # warm-up: not counted
        on_fleet()
        costs = {}
        for length, path in sorted(sources.items()):
            costs[f"{length:g}"] = cost = run_job(path, mode, meters, args.job_timeout)
            print(
                f"{name:11} {length:5g}s  cpu {cost.get('cpu.workers_s', 0):7.1f}s  "
                f"runs {cost.get('event.task.finished', 0):4.0f}  "
                f"events {cost.get('events.total', 0):5.0f}  s3 {cost.get('s3.requests', 0):5.0f}"
                f"  chunks {cost['plan.chunks']:3.0f}  ({cost.get('wall_s', 0):.0f}s wall)",
                flush=True,
            )
        return costs
    finally:
        fleet.stop_all()
        meters.roots = []


def parse_args() -> argparse.Namespace:
    """The options, paths made absolute before the working directory changes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="lengths 8,16,24 s")
    parser.add_argument("--lengths", help="seconds of source, comma-separated (10,30,60)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {','.join(MODES)}")
    parser.add_argument("--media", type=Path, default=Path("/tmp/capacity-media"))
    parser.add_argument("--janitor-jobs", type=int, default=300, help="stored jobs to sweep")
    parser.add_argument("--job-timeout", type=float, default=400.0)
    parser.add_argument("--no-reference", action="store_true", help="skip the one-ffmpeg CPU")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--model-only", type=Path, help="a run's JSON: fit and model it again")
    args = parser.parse_args()
    lengths = args.lengths or ("8,16,24" if args.quick else "10,30,60")
    args.lengths = [float(x) for x in lengths.split(",")]
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes: {unknown}")
    for name in ("media", "json", "model_only"):  # before the working directory changes
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).expanduser().resolve())
    return args


def header(args: argparse.Namespace, dropped: list[str]) -> dict[str, Any]:
    """What the run was: printed and kept in the JSON."""
    return run_meta(
        git_revision(ROOT),
        source="testsrc2 + 440 Hz tone, 1280x720, 30 fps, H.264 closed 2 s GOPs",
        fleet=f"{WORKERS} x python -m worker --concurrency 1, default settings but "
        + ", ".join(f"{k}={v}" for k, v in FLEET_ENV.items()),
        modes={m: MODES[m][1] or "defaults" for m in args.modes},
        lengths_s=args.lengths,
        dropped_env=dropped,
    )


def main() -> None:
    """Sources, references, every mode's jobs, the janitor; then fits and model."""
    args = parse_args()
    if args.model_only:  # the model again from a run's counts (e.g. after changing ASSUMED)
        report(json.loads(args.model_only.read_text()), args.json)
        return
    dropped = sorted(k for k in os.environ if k.startswith("ENCODEQ_") and k not in NEUTRAL_ENV)
    for key in dropped:
        del os.environ[key]
    os.chdir(ROOT)  # python -m worker puts the working directory first on the workers' path
    doc: dict[str, Any] = {"meta": header(args, dropped)}
    args.media.mkdir(parents=True, exist_ok=True)
    made = {x: make_source(Source(x, "30", "closed", 1280, 720), args.media) for x in args.lengths}
    sources = {x: path for x, (path, _) in made.items()}
    if not args.no_reference:
        doc["one_ffmpeg_cpu_s"] = one_ffmpeg_cpu(sources)
        print(f"{'one ffmpeg':12} CPU-s {doc['one_ffmpeg_cpu_s']}", flush=True)
    with counted_stack() as (stack, s3), BusMeter(stack.broker_url) as bus:
        meters = Meters(s3, bus)
        doc["broker_reference"] = broker_references(stack.broker_url)
        costs: dict[str, dict[str, Metrics]] = {}

        def measure_fleet() -> None:
            if "fleet" not in doc:  # the first fleet, warm and idle
                doc["fleet"] = fleet_facts(stack.vhost, meters)

        for name in args.modes:
            costs[name] = run_mode(name, sources, meters, args, measure_fleet)
            if MODES[name][0] == "chunked":  # the longest job's plan: the most chunks
                doc["watchdog_pass"] = watchdog_pass(s3, meters.last_job)
        doc["janitor"] = janitor_sweep(s3, args.janitor_jobs)
    doc["jobs"] = costs
    if args.json:  # the counts first: a model that fails must not lose them
        dump(args.json, doc)
    report(doc, args.json)


def report(doc: dict[str, Any], path: Path | None) -> None:
    """Fits and model from the counts; printed, and kept in ``path``."""
    doc["fits"] = fit_all(doc["jobs"])
    doc["model"] = model(doc)
    print_fits(doc)
    print_model(doc["model"])
    if path:
        dump(path, doc)


if __name__ == "__main__":
    main()
