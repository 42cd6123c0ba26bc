"""Benchmark: many jobs at once (issue 13). Side by side in one run, on one fleet of 2 workers
(``encodeq worker --concurrency 1`` each, default settings: a node per lane and a control node):

  idle      a 15 s clip alone: upload finished to completed, and to its first playable playlist
  behind    a long source (``--long``, default 10 min) is encoding; 10 s later the same clip
            (normal), and once that completed, the clip again with ``--priority high``; each
            clip's latency as a ratio of idle (targets: 1.5x normal, 1.2x high); the long job's
            own time to its first playable playlist and to completed
  playable  with ``--playable 60,300,600``: each length (720p, and 1080p with ``--hd``) alone on
            the idle fleet, upload finished to its first playable playlist (target 8 s), then
            cancelled (``encodeq cancel``) so the next starts on an idle fleet again
  batch     with ``--batch``: one long, five mid (``--mid``), ``--clips`` 15 s sources uploaded at
            once, makespan with the lanes and windows (the default) and in FIFO order (one lane,
            no window, no whole lowest rung: the order before issue 13); ratio (target within 5 %)

Latencies come from the events (``job.completed``, ``rendition.playable``) seen by a subscription
opened before each upload; "playable" is the first ``rendition.playable``: the rung's live playlist
and the job's master are in storage (a player fetching them adds its own start-up). Sources
(testsrc2 + tone, 29.97 fps) are cached in ``--media``.

    python bench/bench_many_jobs.py --media /work/sweep-media [--long 600] [--playable 60,300]
        [--hd] [--batch]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, fleet, media recipe

from support.fleet import WorkerFleet, processes_with  # noqa: E402
from support.stack import isolated_stack  # noqa: E402
from support.waiting import wait_for  # noqa: E402
from sweep_media import Source, make_source  # noqa: E402

#: What the run records per job: upload start, first playable, completed (seconds since start).
Times = dict[str, float]


class Clock:
    """Every job's milestones from the events, on a thread, from one subscription."""

    def __init__(self) -> None:
        self.times: dict[str, Times] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Clock:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from kombu import Connection

        from config.settings import Settings
        from core.events import EventSubscription

        keys = ("job.completed", "job.failed", "rendition.playable")
        with Connection(Settings().broker_url) as conn, EventSubscription(conn, keys) as events:
            self._ready.set()
            while not self._stop.is_set():
                for event in events.events(timeout=0.5):
                    times = self.times.setdefault(str(event.get("job_id")), {})
                    name = {"rendition.playable": "playable"}.get(event["event"], "ended")
                    times.setdefault(name, time.time())
                    if event["event"] == "job.failed":
                        times["failed"] = 1.0

    def upload(self, source: Path, *, priority: str = "normal") -> str:
        from uploader.submit import submit

        job_id = submit(source, priority=priority).job_id  # type: ignore[arg-type]
        self.times.setdefault(job_id, {})["uploaded"] = time.time()  # the upload finished
        return job_id

    def wait_playable(self, job_id: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while "playable" not in self.times.get(job_id, {}):
            if time.monotonic() > deadline or "ended" in self.times.get(job_id, {}):
                raise TimeoutError(f"job {job_id} did not play within {timeout}s")
            time.sleep(0.1)

    def wait(self, job_ids: list[str], timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while not all("ended" in self.times.get(j, {}) for j in job_ids):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs not done after {timeout}s: {job_ids}")
            time.sleep(0.2)
        failed = [j for j in job_ids if "failed" in self.times[j]]
        if failed:
            raise RuntimeError(f"jobs failed: {failed}")

    def latency(self, job_id: str, milestone: str = "ended") -> float:
        times = self.times[job_id]
        return round(times[milestone] - times["uploaded"], 2) if milestone in times else -1.0


def fleet(env: dict[str, str]) -> WorkerFleet:
    workers = WorkerFleet()
    for i in range(2):
        workers.start(f"many{i}", env=env)
    return workers


def scenario_behind(clock: Clock, long: Path, clip: Path) -> dict[str, Any]:
    """The clip alone, then behind the long job (normal, then high)."""
    idle = clock.upload(clip)
    clock.wait([idle])
    long_id = clock.upload(long)
    time.sleep(10)  # the scenario itself: the clip comes 10 s after the long job (not a wait)
    normal = clock.upload(clip)
    clock.wait([normal])
    high = clock.upload(clip, priority="high")
    clock.wait([high])
    clock.wait([long_id])
    base = clock.latency(idle)
    return {
        "idle_s": base,
        "idle_playable_s": clock.latency(idle, "playable"),
        "behind_normal_s": clock.latency(normal),
        "behind_high_s": clock.latency(high),
        "normal_ratio": round(clock.latency(normal) / base, 2),
        "high_ratio": round(clock.latency(high) / base, 2),
        "long_playable_s": clock.latency(long_id, "playable"),
        "long_completed_s": clock.latency(long_id),
    }


def scenario_playable(clock: Clock, sources: dict[str, Path]) -> dict[str, float]:
    """Each source alone: seconds from its upload to its first playable playlist; then it is
    cancelled, and the next starts once the fleet holds nothing of it."""
    from uploader.cancel import cancel

    result = {}
    for name, path in sources.items():
        job_id = clock.upload(path)
        clock.wait_playable(job_id)
        result[name] = clock.latency(job_id, "playable")
        cancel(job_id, by="bench")
        print(f"first playable {name}: {result[name]} s", flush=True)
        wait_for(lambda j=job_id: not processes_with(j, "ffmpeg"), 30, "the cancelled ffmpeg")
    return result


def batch(clock: Clock, sources: list[Path]) -> float:
    """Upload every source at once; seconds until the last completed."""
    started = time.time()
    ids = [clock.upload(s) for s in sources]
    clock.wait(ids)
    return round(max(clock.times[j]["ended"] for j in ids) - started, 1)


#: The order before issue 13: one lane, every task published at once, no whole lowest rung.
FIFO = {
    "ENCODEQ_JOB_WINDOW": "100000",
    "ENCODEQ_EXPRESS_MAX_S": "0",
    "ENCODEQ_LOWEST_RUNG_WHOLE": "false",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media", type=Path, default=Path("/tmp/sweep-media"))
    parser.add_argument("--long", type=float, default=600.0)
    parser.add_argument("--mid", type=float, default=60.0)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--batch", action="store_true")
    parser.add_argument("--playable", default="", help="lengths (s), comma-separated")
    parser.add_argument("--hd", action="store_true", help="also 1080p sources for --playable")
    parser.add_argument("--skip-behind", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--max-chunk", type=float, help="ENCODEQ_MAX_CHUNK_S for the fleet (default: its own)"
    )
    return parser.parse_args()


def source(length: float, media: Path, height: int = 720) -> Path:
    width = height * 16 // 9
    return make_source(Source(length, "29.97", "closed", width, height), media)[0]


def main() -> None:
    args = parse_args()
    os.chdir(ROOT)  # python -m worker puts the working directory first on the workers' path
    args.media.mkdir(parents=True, exist_ok=True)
    long, mid, clip = (source(x, args.media) for x in (args.long, args.mid, 15.0))
    env = {"ENCODEQ_MAX_CHUNK_S": str(args.max_chunk)} if args.max_chunk else {}
    result: dict[str, Any] = {"long_s": args.long, "fleet": "2 workers x concurrency 1", **env}
    lengths = [float(x) for x in args.playable.split(",") if x]
    firsts = {f"{x:g}s 720p": source(x, args.media) for x in lengths}
    if args.hd:
        firsts |= {f"{x:g}s 1080p": source(x, args.media, 1080) for x in lengths}
    with isolated_stack("bench-many"), Clock() as clock:
        workers = fleet(env)
        try:
            if not args.skip_behind:
                result["behind"] = scenario_behind(clock, long, clip)
                print(json.dumps(result["behind"], indent=2), flush=True)
            if firsts:
                result["first_playable_s"] = scenario_playable(clock, firsts)
            if args.batch:
                sources = [long] + [mid] * 5 + [clip] * args.clips
                result["batch_lanes_s"] = batch(clock, sources)
                print(f"batch with lanes: {result['batch_lanes_s']} s", flush=True)
        finally:
            workers.stop_all()
        if args.batch:
            fifo = fleet({**env, **FIFO})
            try:
                result["batch_fifo_s"] = batch(clock, sources)
            finally:
                fifo.stop_all()
            result["batch_ratio"] = round(result["batch_lanes_s"] / result["batch_fifo_s"], 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
