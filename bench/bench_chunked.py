"""Benchmark: chunk-parallel encoding against one ffmpeg doing the ladder, and 1 vs 2 workers.

Side by side in one run, same source, same rungs, same encoder settings (worker/encoder.py):

  (a) one ffmpeg process, decode once, every rung an output of one filter graph
  (c) the chunked pipeline with 2 workers, upload to completed          target c/a <= 1.05
  (c1) the same with ENCODEQ_FFMPEG_THREADS=1 (one worker per core: no oversubscription)
  (s1, s2) the chunked pipeline with 1 and 2 workers, each pinned to its own core
      (``taskset -c N encodeq worker``) with ENCODEQ_FFMPEG_THREADS=1: N single-core hosts.
      speed-up s1/s2 (target >= 1.8) and efficiency; then, on paper, 8 and 32 hosts from the
      measured per-chunk time and serial part (probe + split + join + finalize + queue).

Sources: ``--source 1080p60`` (60 s 1080p) and ``--source 720p300`` (5 min 720p); ``--quick``
(24 s 720p, 4 s chunks) for a busy machine. Runs on a vhost and an S3 server of its own.

    python bench/bench_chunked.py --quick
    python bench/bench_chunked.py --source 1080p60 --source 720p300
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from isolation import isolated_stack  # noqa: E402

SOURCES: dict[str, tuple[int, int, float, int]] = {
    # name: width, height, seconds, chunk seconds
    "quick": (1280, 720, 24.0, 4),
    "1080p60": (1920, 1080, 60.0, 12),
    "720p300": (1280, 720, 300.0, 30),
}


@dataclass
class Run:
    seconds: float
    chunks: int
    chunk_seconds: list[float]
    split: str
    workers: dict[int, str]


def make_source(path: Path, width: int, height: int, duration: float) -> Path:
    """testsrc2 + tone, keyframes every 2 s (on the segment grid: the stream-copy split)."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=s={width}x{height}:r=30:d={duration}",
         "-f", "lavfi", "-i", f"sine=f=440:d={duration}",
         "-c:v", "libx264", "-preset", "fast", "-crf", "18", "-g", "60", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )  # fmt: skip
    return path


def one_process(source: Path, out: Path, threads: int) -> float:
    """(a) one ffmpeg, one decode, every rung (bench_pipeline's variant (a))."""
    from bench_pipeline import one_process_all_rungs

    from config.settings import get_settings

    get_settings.cache_clear()
    os.environ["ENCODEQ_FFMPEG_THREADS"] = str(threads)
    try:
        return one_process_all_rungs(source, out)
    finally:
        os.environ.pop("ENCODEQ_FFMPEG_THREADS", None)
        get_settings.cache_clear()


def _consumers(url: str, queue: str) -> int:
    from kombu import Connection

    try:
        with Connection(url) as conn:
            return conn.default_channel.queue_declare(queue, passive=True)[2]
    except Exception:
        return 0


def chunked_pipeline(
    source: Path, workers: int, env: dict[str, str], pinned: bool, threads: int | None = None
) -> Run:
    """Upload -> probe/split -> chunks on competing workers -> joins -> finalize -> completed."""
    from config.settings import Settings
    from config.topology import ENCODE_QUEUE_NAME
    from encodeq.manifest import JobStore
    from encodeq.storage import Storage
    from uploader.submit import submit

    worker_env = {**os.environ, **env}
    if pinned or threads is not None:
        worker_env["ENCODEQ_FFMPEG_THREADS"] = str(threads or 1)
    url = Settings().broker_url
    before = _consumers(url, ENCODE_QUEUE_NAME)
    procs = []
    for i in range(workers):
        argv = ["encodeq", "worker", "--concurrency", "1", "--loglevel", "WARNING",
                "--hostname", f"bench{i}@%h"]  # fmt: skip
        if pinned:
            argv = ["taskset", "-c", str(i % (os.cpu_count() or 1)), *argv]
        quiet = subprocess.DEVNULL
        procs.append(
            subprocess.Popen(
                argv, env=worker_env, stdout=quiet, stderr=quiet, start_new_session=True
            )
        )
    try:
        deadline = time.monotonic() + 90
        while _consumers(url, ENCODE_QUEUE_NAME) < before + workers:
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.2)
        storage = Storage()
        jobs = JobStore(storage)
        started = time.perf_counter()
        job_id = submit(source, storage, mode="chunked").job_id
        while True:
            manifest = jobs.load_job(job_id)
            if manifest is not None and manifest.finished:
                break
            time.sleep(0.1)
        elapsed = time.perf_counter() - started
        if manifest.state != "completed" or manifest.chunks is None:
            raise RuntimeError(f"chunked job failed: {manifest.error}")
        records = [jobs.load_chunk(job_id, i) for i in range(manifest.chunks.count)]
        return Run(
            seconds=elapsed,
            chunks=manifest.chunks.count,
            chunk_seconds=[r.seconds or 0.0 for r in records if r is not None],
            split=manifest.chunks.split,
            workers={r.index: (r.worker or "").split("@")[0] for r in records if r is not None},
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)


def model(t1: Run, hosts: int) -> float:
    """Time on ``hosts`` single-core hosts: the serial part plus the chunk waves.

    serial = T1 - (sum of chunk task times on 1 host); each wave costs one mean chunk task.
    """
    per_chunk = statistics.mean(t1.chunk_seconds)
    serial = max(0.0, t1.seconds - sum(t1.chunk_seconds))
    return serial + math.ceil(t1.chunks / hosts) * per_chunk


def bench(name: str, tmp: Path, repeat: int) -> None:
    width, height, duration, chunk = SOURCES[name]
    env = {"ENCODEQ_CHUNK_SECONDS": str(chunk), "ENCODEQ_STRAGGLER_MIN_S": "600"}
    os.environ.update(env)  # the uploader process reads settings too
    source = make_source(tmp / f"{name}.mp4", width, height, duration)
    print(f"\n== {name}: {width}x{height}, {duration:.0f}s, 30 fps, chunks of {chunk}s, "
          f"{source.stat().st_size / 1e6:.1f} MB; cores: {os.cpu_count()}")  # fmt: skip
    a, c, c1, s1, s2 = [], [], [], [], []
    last: dict[str, Run] = {}
    for i in range(repeat):
        out = tmp / f"a{i}"
        out.mkdir()
        a.append(one_process(source, out, threads=0))
        shutil.rmtree(out)
        last["c"] = chunked_pipeline(source, 2, env, pinned=False)
        c.append(last["c"].seconds)
        c1.append(chunked_pipeline(source, 2, env, pinned=False, threads=1).seconds)
        last["s1"] = chunked_pipeline(source, 1, env, pinned=True)
        s1.append(last["s1"].seconds)
        last["s2"] = chunked_pipeline(source, 2, env, pinned=True)
        s2.append(last["s2"].seconds)
    runs = (("a", a), ("c", c), ("c1", c1), ("s1", s1), ("s2", s2))
    med = {k: statistics.median(v) for k, v in runs}
    rows = [
        ("a", "one ffmpeg, every rung from one decode", med["a"]),
        ("c", "chunked pipeline, 2 workers, upload->done", med["c"]),
        ("c1", "the same, 1 ffmpeg thread per worker", med["c1"]),
        ("s1", "chunked, 1 worker pinned, 1 thread", med["s1"]),
        ("s2", "chunked, 2 workers pinned, 1 thread each", med["s2"]),
    ]
    print(f"{'':3} {'variant':44} {'seconds':>8}")
    for key, label, seconds in rows:
        print(f"{key:3} {label:44} {seconds:8.2f}")
    speedup = med["s1"] / med["s2"]
    run1 = last["s1"]
    ratios = f"c/a = {med['c'] / med['a']:.3f}, c1/a = {med['c1'] / med['a']:.3f}"
    print(f"\n{ratios}  (target <= 1.05)")
    print(f"speed-up s1/s2 = {speedup:.2f}x, efficiency {speedup / 2:.0%}  (target >= 1.8x)")
    per_chunk = statistics.mean(run1.chunk_seconds)
    serial = max(0.0, run1.seconds - sum(run1.chunk_seconds))
    print(f"split: {run1.split}; {run1.chunks} chunks; mean chunk task {per_chunk:.2f}s on one "
          f"core; serial part {serial:.2f}s (probe+split, audio, joins, finalize)")  # fmt: skip
    print(f"\n{'hosts':>5} {'model s':>8} {'speed-up':>9} {'efficiency':>10}")
    for hosts in (1, 2, 8, 32):
        t = model(run1, hosts)
        up = model(run1, 1) / t
        print(f"{hosts:5d} {t:8.2f} {up:8.2f}x {up / hosts:10.0%}")
    print("(measured 2-host speed-up above; 8/32 are the model: serial part + waves of chunks)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", choices=sorted(SOURCES), default=[])
    parser.add_argument("--quick", action="store_true", help="24 s 720p only (a busy machine)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median counts")
    args = parser.parse_args()
    names = ["quick"] if args.quick or not args.source else args.source
    with isolated_stack("bench-chunked"), tempfile.TemporaryDirectory() as tmp_dir:
        for name in names:
            bench(name, Path(tmp_dir), args.repeat)


if __name__ == "__main__":
    main()
