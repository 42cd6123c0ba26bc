"""Benchmark: the pipeline in its default mode against one ffmpeg, over lengths, rates and GOPs.

Issue 12 ("fast on every source"). For every source, side by side in one run (in a seeded random
order), same rungs, same x264 settings (worker/encoder.py):

  (a)  one ffmpeg process, decode once, every rung of the ladder an output (bench_chunked's)
  (c)  the pipeline as a user runs it: upload with no mode (the probe picks it), one worker
       started with their defaults (``python -m worker --concurrency 2``, ``--fleet 2x2``), no
       ENCODEQ_* tuning (any in the environment is dropped and named), upload to completed
  (s1, s2) with ``--scaling``, for sources of 30 s and more: 1 and 2 workers of concurrency 1,
       each pinned to its own core (``taskset``), default settings; s1/s2 (target >= 1.9)

From (c)'s manifest and records: the mode, the chunk plan, and the serial head and tail (see
sweep_report.Pipeline). Quality: PSNR and SSIM per rung of (a) and (c) against the scaled source
(``--quality auto``: the rate x GOP sweep and lengths up to 60 s; ``all``; ``none``).

Sources (testsrc2 + tone, sweep_media.py), H.264, cached in ``--media``: a length sweep at 29.97
fps, closed GOPs (``--lengths``), and a frame rate x GOP sweep at ``--sweep-length``. The run has
a vhost and an S3 server of its own; the workers run this tree's code (the working directory is
set to it: ``python -m worker`` imports from there first).

About an hour for the defaults at 720p on 2 cores (plus ~8 min making the sources the first
time; ``--scaling`` adds over an hour); ``--quick`` (426x240, 12 and 37 s) about a minute.

    python bench/bench_sweep.py --quick
    python bench/bench_sweep.py --media ~/sweep-media --json docs/bench_sweep.json \\
        --plot docs/bench_sweep.png [--scaling] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, fleet, media recipe

from bench_chunked import epoch, one_process  # noqa: E402
from run_meta import git_revision, run_meta  # noqa: E402
from support.fleet import WorkerFleet, worker_fleet  # noqa: E402
from support.media import FRAME_RATES  # noqa: E402
from support.stack import isolated_stack  # noqa: E402
from sweep_media import GOPS, Source, make_source, quality  # noqa: E402
from sweep_report import HEADER, Pipeline, Point, plot, point_line, print_tables  # noqa: E402
from timed_job import JobRun, run_job  # noqa: E402

DEFAULTS = {
    "size": "1280x720",
    "lengths": "12,20,37,45,60,90,180,300,600",
    "sweep_length": 45.0,
    "rates": "24,25,29.97,30,59.94",
    "gops": "closed,open",
}
QUICK = {
    "size": "426x240",
    "lengths": "12,37",
    "sweep_length": 12.0,
    "rates": "25,29.97",
    "gops": "closed,open",
}
#: ENCODEQ_* that change nothing about speed and may stay; every other one is dropped.
NEUTRAL_ENV = {"ENCODEQ_WORK_DIR", "ENCODEQ_BUCKET_PREFIX"}
QUALITY_UP_TO_S = 60.0
#: A source whose runs take longer than this (s, plus so much per second of source and repeat)
#: is given up: run_job waits for ever on a job that neither completes nor fails.
JOB_LIMIT_S, JOB_LIMIT_PER_S = 300.0, 12.0


class SweepTimeout(Exception):
    """A source's runs took longer than their limit (not a TimeoutError: event loops catch it)."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise SweepTimeout in this (main) thread after ``seconds``, wherever it is waiting."""

    def expired(signum: int, frame: object) -> None:
        raise SweepTimeout(f"gave up after {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def default_fleet(layout: str) -> Iterator[WorkerFleet]:
    """``PxC``: P worker processes of concurrency C, each as a user starts it (no tuning)."""
    processes, concurrency = (int(n) for n in layout.split("x"))
    fleet = WorkerFleet()
    try:
        for i in range(processes):
            fleet.start(f"sweep{i}", concurrency=concurrency)
        yield fleet
    finally:
        fleet.stop_all()


def pipeline_job(path: Path, mode: str | None) -> tuple[Pipeline, dict[str, tuple[int, int]]]:
    """(c): upload (``mode``: None, the default), wait for completed; the job read back, and its
    rungs' sizes."""
    from kombu import Connection

    from config.settings import Settings
    from core.events import EventSubscription

    with (
        Connection(Settings().broker_url) as conn,
        EventSubscription(conn, ("rendition.started",)) as events,
    ):
        run = run_job(path, mode=mode)
        started = [e["time"] for e in events.events(timeout=0.5) if e.get("job_id") == run.job_id]
    return read_job(run, started)


def read_job(run: JobRun, started: list[str]) -> tuple[Pipeline, dict[str, tuple[int, int]]]:
    """Mode, plan and serial parts from the manifest and the chunk and rendition records."""
    from core.layout import AUDIO
    from core.manifest import JobStore
    from core.storage import Storage

    jobs = JobStore(Storage())
    manifest = jobs.load(run.job_id)
    assert manifest is not None
    created, completed = epoch(manifest.created_at), epoch(manifest.updated_at)
    sizes = {r.name: (r.width, r.height) for r in manifest.renditions}
    job = Pipeline(
        run.job_id,
        run.seconds,
        run.upload_seconds,
        manifest.mode or "?",
        manifest.mode_reason,
        local_cpu_seconds=run.local_cpu_seconds,
    )
    if manifest.chunks is None:  # per rung: the renditions are the encodes
        job.head = min(map(epoch, started)) - created if started else None
        ends = [epoch(r.updated_at) for r in manifest.renditions if r.state == "completed"]
        job.tail = completed - max(ends)
        return job, sizes
    job.plan = manifest.chunks.model_dump(mode="json")
    records = [jobs.load_chunk(run.job_id, i) for i in range(manifest.chunks.count)]
    video = [r for r in records if r is not None and r.state == "completed"]
    audio = jobs.load_chunk(run.job_id, AUDIO)
    job.chunk_seconds = [r.seconds or 0.0 for r in video]
    job.audio_seconds = audio.seconds if audio is not None else None
    job.head = min(epoch(r.started_at) for r in video if r.started_at) - created
    done = [r for r in [*video, audio] if r is not None and r.state == "completed"]
    job.tail = completed - max(epoch(r.updated_at) for r in done)
    return job, sizes


def fetch_renditions(
    job_id: str, sizes: dict[str, tuple[int, int]], folder: Path
) -> dict[str, tuple[Path, int, int]]:
    """Each rung's playlist and segments, downloaded from S3 into ``folder``."""
    from core.layout import PLAYLIST_NAME, RENDITIONS, rendition_prefix
    from core.storage import Storage

    storage = Storage()
    rungs = {}
    for name, (width, height) in sizes.items():
        prefix = rendition_prefix(job_id, name)
        for key in storage.list_keys(RENDITIONS, prefix):
            target = folder / key
            target.parent.mkdir(parents=True, exist_ok=True)
            storage.download(RENDITIONS, key, target)
        rungs[name] = (folder / prefix / PLAYLIST_NAME, width, height)
    return rungs


def forget(job_id: str) -> None:
    """The job's objects out of the embedded S3 server (it keeps them in this process's memory)."""
    from core.layout import JOBS, RENDITIONS, UPLOADS, job_prefix
    from core.storage import Storage

    storage = Storage()
    for bucket in (UPLOADS, JOBS, RENDITIONS):
        storage.remove_prefix(bucket, job_prefix(job_id))


def run_a(point: Point, path: Path, scratch: Path, measure: bool) -> None:
    """(a) one ffmpeg, every rung; its outputs' quality when ``measure``."""
    from config.ladder import choose_renditions
    from core.layout import PLAYLIST_NAME

    out = scratch / "a"
    out.mkdir()
    try:
        point.a.append(one_process(path, out))
        if measure:
            plans = choose_renditions(point.source.width, point.source.height)
            rungs = {p.name: (out / p.name / PLAYLIST_NAME, p.width, p.height) for p in plans}
            point.quality["a"] = quality(path, rungs)
    finally:
        shutil.rmtree(out)


def run_c(
    point: Point, path: Path, scratch: Path, measure: bool, fleet: str, mode: str | None
) -> None:
    """(c) the pipeline, default workers (and mode, unless ``mode``); its renditions' quality
    when ``measure``."""
    with default_fleet(fleet):
        job, sizes = pipeline_job(path, mode)
    point.c.append(job.seconds)
    point.pipelines.append(job)
    out = scratch / "c"
    try:
        if measure:
            point.quality["c"] = quality(path, fetch_renditions(job.job_id, sizes, out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
        forget(job.job_id)


def run_pinned(path: Path, workers: int, mode: str | None) -> float:
    """(s1/s2) ``workers`` workers of concurrency 1, each pinned to its own core."""
    with worker_fleet(workers, pin=True):
        run = run_job(path, mode=mode)
    forget(run.job_id)
    return run.seconds


def warm_up(path: Path, fleet: str) -> float:
    """One untimed run of (a) and (c): the first source must not pay for the buckets, the
    queues and cold caches."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        one_process(path, Path(tmp))
    with default_fleet(fleet):
        run = run_job(path, mode=None)
    forget(run.job_id)
    return time.perf_counter() - started


def measure(point: Point, path: Path, args: argparse.Namespace, rng: random.Random) -> None:
    """Every run of one source; (a) and (c) in a random order each repeat."""
    with tempfile.TemporaryDirectory(prefix="sweep-") as tmp:
        scratch = Path(tmp)
        for i in range(args.repeat):
            order = ["a", "c"]
            rng.shuffle(order)
            point.order.append("".join(order))
            for variant in order:
                wanted = i == 0 and wants_quality(args.quality, point)
                if variant == "a":
                    run_a(point, path, scratch, wanted)
                else:
                    run_c(point, path, scratch, wanted, args.fleet, args.mode)
    if args.scaling and point.source.length >= 30:
        for _ in range(args.repeat):
            point.s1.append(run_pinned(path, 1, args.mode))
            point.s2.append(run_pinned(path, 2, args.mode))


def wants_quality(choice: str, point: Point) -> bool:
    if choice != "auto":
        return choice == "all"
    return "rate x gop" in point.sweeps or point.source.length <= QUALITY_UP_TO_S


def plan_points(args: argparse.Namespace) -> list[Point]:
    """The length sweep, then the rate x GOP sweep; a source in both is measured once."""
    width, height = (int(n) for n in args.size.split("x"))
    points: dict[Source, Point] = {}

    def add(source: Source, sweep: str) -> None:
        points.setdefault(source, Point(source, [])).sweeps.append(sweep)

    for length in args.lengths:
        add(Source(length, "29.97", "closed", width, height), "length")
    for rate in args.rates:
        for gop in args.gops:
            add(Source(args.sweep_length, rate, gop, width, height), "rate x gop")
    return list(points.values())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sources: a smoke run")
    parser.add_argument("--size", help=f"WxH (default {DEFAULTS['size']})")
    parser.add_argument("--lengths", help=f"seconds (default {DEFAULTS['lengths']})")
    parser.add_argument("--sweep-length", type=float, help="of the rate x GOP sweep (45)")
    parser.add_argument("--rates", help=f"of {','.join(FRAME_RATES)} ({DEFAULTS['rates']})")
    parser.add_argument("--gops", help=f"of {','.join(GOPS)} ({DEFAULTS['gops']})")
    parser.add_argument("--media", type=Path, help="cache of sources (default: a temp folder)")
    parser.add_argument("--quality", choices=("auto", "all", "none"), default="auto")
    parser.add_argument("--scaling", action="store_true", help="also s1/s2 from 30 s up")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; medians count")
    parser.add_argument("--mode", choices=("chunked", "per-rung"), help="(c)'s (default: none)")
    parser.add_argument("--fleet", default="2x2", help="(c)'s workers: PROCESSESxCONCURRENCY")
    parser.add_argument("--seed", type=int, help="of the a/c order (default: random, printed)")
    parser.add_argument("--json", type=Path, help="keep every number in this JSON file")
    parser.add_argument("--plot", type=Path, help="draw c/a against length into this PNG")
    args = parser.parse_args()
    chosen = QUICK if args.quick else DEFAULTS
    for key, value in chosen.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.lengths = [float(x) for x in args.lengths.split(",")]
    args.rates, args.gops = args.rates.split(","), args.gops.split(",")
    unknown = [r for r in args.rates if r not in FRAME_RATES] + [
        g for g in args.gops if g not in GOPS
    ]
    if unknown:
        parser.error(f"unknown rate or GOP kind: {unknown}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    for name in ("media", "json", "plot"):  # before the working directory changes
        if getattr(args, name) is not None:
            setattr(args, name, getattr(args, name).expanduser().resolve())
    return args


def defaults_only() -> list[str]:
    """Drop ENCODEQ_* tuning from the environment the workers inherit; what was dropped."""
    dropped = sorted(k for k in os.environ if k.startswith("ENCODEQ_") and k not in NEUTRAL_ENV)
    for key in dropped:
        del os.environ[key]
    return dropped


def header(args: argparse.Namespace, dropped: list[str]) -> dict[str, object]:
    """What the run was: printed and kept in the JSON."""
    return run_meta(
        f"{ROOT} @ {git_revision(ROOT)}",
        size=args.size,
        fleet=f"{args.fleet} (processes x concurrency), default settings",
        mode=args.mode or "the default (the probe picks)",
        seed=args.seed,
        repeat=args.repeat,
        quality=args.quality,
        dropped_env=dropped,
    )


def main() -> None:
    args = parse_args()
    dropped = defaults_only()
    os.chdir(ROOT)  # python -m worker puts the working directory first on the workers' path
    meta = header(args, dropped)
    rng = random.Random(args.seed)
    points = plan_points(args)
    # One stack for the run: this process reads its settings (S3 endpoint, broker) once.
    with (
        isolated_stack("bench-sweep"),
        tempfile.TemporaryDirectory(prefix="sweep-media-") as tmp,
    ):
        media = args.media or Path(tmp)
        media.mkdir(parents=True, exist_ok=True)
        print(f"{'media':12} {media}\n{'sources':12} {len(points)}")
        first, points[0].make_seconds = make_source(points[0].source, media)
        print(f"{'warm-up':12} {warm_up(first, args.fleet):.0f}s")
        print(f"\n   took {HEADER}")
        for point in points:
            path, made = make_source(point.source, media)
            point.make_seconds = point.make_seconds or made
            started = time.perf_counter()
            try:
                with time_limit(JOB_LIMIT_S + JOB_LIMIT_PER_S * point.source.length * args.repeat):
                    measure(point, path, args, rng)
            except Exception as exc:  # a failed or stuck job must not end an hour's sweep
                point.error = f"{type(exc).__name__}: {exc}"[:500]
            took = time.perf_counter() - started
            print(f"{took:6.0f}s {point_line(point)}", flush=True)
            if args.json:
                doc = {"meta": meta, "points": [p.to_json() for p in points]}
                args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print_tables(points)
    if args.plot:
        title = f"encodeq, default mode, {args.fleet} worker on {os.cpu_count()} cores, {args.size}"
        plot(points, args.plot, title)


if __name__ == "__main__":
    main()
