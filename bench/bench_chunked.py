"""Benchmark: chunk-parallel encoding against one ffmpeg, against per-rung mode, and its scaling.

Side by side in one run, same source, same rungs, same encoder settings (worker/encoder.py):

  (a)  one ffmpeg process, decode once, every rung an output of one filter graph
  (p)  the per-rung pipeline with 2 workers, upload to completed (one decode per rung)
  (c)  the chunked pipeline with 2 workers, upload to completed          target c/a <= 1.05
  (c1) the same with one encoder thread per worker (ENCODEQ_FFMPEG_THREADS=1): one worker per
       core, the deployment chunked mode is made for (no two ffmpegs fighting over the cores)
  (s1, s2) the chunked pipeline with 1 and 2 workers, each pinned to its own core
      (``taskset -c N python -m worker``) with ENCODEQ_FFMPEG_THREADS=1: N single-core hosts.
      speed-up s1/s2 (target >= 1.8) and efficiency; then, on paper, 8 and 32 hosts from the
      measured per-chunk time and serial part (probe + split + joins + finalize + queue).

For (c) it breaks the time into phases (upload; probe and split; chunks; joins and finalize) and
reports the CPU the embedded S3 server took from the two cores the workers run on.

Sources: ``--source 1080p60`` (60 s 1080p) and ``--source 720p300`` (5 min 720p); ``--quick``
(24 s 720p, 4 s chunks) for a busy machine. ``--plot FILE.png`` draws the table (matplotlib, the
``bench`` extra); ``--json FILE`` keeps the numbers. Runs on a vhost and an S3 server of its own.

    python bench/bench_chunked.py --quick
    python bench/bench_chunked.py --source 1080p60 --source 720p300 --plot docs/bench_chunked.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, fleet, media recipe

from chunked_model import HOSTS, Chunked, Model, Result  # noqa: E402
from support.fleet import worker_fleet  # noqa: E402
from support.media import make_video  # noqa: E402
from support.stack import isolated_stack  # noqa: E402
from timed_job import run_job  # noqa: E402

SOURCES: dict[str, tuple[int, int, float, int]] = {
    # name: width, height, seconds, chunk seconds (a multiple of the 4 s segment: an even number
    # of chunks keeps the last wave of 2 workers full)
    "quick": (1280, 720, 24.0, 4),
    "1080p60": (1920, 1080, 60.0, 8),
    "720p300": (1280, 720, 300.0, 32),
}


def make_source(path: Path, width: int, height: int, duration: float) -> Path:
    """testsrc2 + tone, keyframes every 2 s (on the segment grid: the stream-copy split)."""
    return make_video(path, width, height, duration, fps=30, preset="fast", crf=18, gop=60)


def one_process(source: Path, out: Path) -> float:
    """(a) one ffmpeg, one decode, every rung (bench_pipeline's variant (a))."""
    from bench_pipeline import one_process_all_rungs

    return one_process_all_rungs(source, out)


def per_rung_pipeline(source: Path) -> float:
    """(p) the per-rung pipeline, 2 workers, upload to completed."""
    with worker_fleet(2):
        return run_job(source, mode="per-rung").seconds


def epoch(iso: str) -> float:
    """An ISO time of a job record, as seconds since the epoch."""
    return datetime.fromisoformat(iso).timestamp()


def chunked_pipeline(source: Path, workers: int, pinned: bool, one_thread: bool = False) -> Chunked:
    """Upload -> probe/split -> chunks on competing workers -> joins -> finalize -> completed."""
    from core.layout import AUDIO
    from core.manifest import JobStore
    from core.storage import Storage

    env = {"ENCODEQ_FFMPEG_THREADS": "1"} if pinned or one_thread else {}
    with worker_fleet(workers, env, pin=pinned):
        run = run_job(source, mode="chunked")
    jobs = JobStore(Storage())
    manifest = jobs.load_job(run.job_id)
    assert manifest is not None and manifest.chunks is not None
    records = [jobs.load_chunk(run.job_id, i) for i in range(manifest.chunks.count)]
    done = [r for r in records if r is not None and r.started_at and r.seconds is not None]
    first = min(epoch(r.started_at or "") for r in done)
    last = max(epoch(r.started_at or "") + (r.seconds or 0.0) for r in done)
    uploaded = run.started_at + run.upload_seconds
    phases = {
        "upload": run.upload_seconds,
        "probe + split": first - uploaded,
        "chunks": last - first,
        "joins + finalize": run.started_at + run.seconds - last,
    }
    audio = jobs.load_chunk(run.job_id, AUDIO)
    return Chunked(
        seconds=run.seconds,
        chunks=manifest.chunks.count,
        chunk_seconds=[r.seconds or 0.0 for r in done],
        encode_seconds=[r.encode_seconds or 0.0 for r in done],
        audio_seconds=(audio.seconds or 0.0) if audio is not None else 0.0,
        rungs=len(jobs.load(run.job_id).renditions),
        split=manifest.chunks.split,
        phases=phases,
        local_cpu_seconds=run.local_cpu_seconds,
    )


def bench(name: str, tmp: Path, repeat: int) -> Result:
    width, height, duration, chunk = SOURCES[name]
    os.environ["ENCODEQ_CHUNK_SECONDS"] = str(chunk)  # workers and the uploader read settings
    os.environ["ENCODEQ_STRAGGLER_MIN_S"] = "600"  # equal chunks: no straggler re-offers
    source = make_source(tmp / f"{name}.mp4", width, height, duration)
    print(
        f"\n== {name}: {width}x{height}, {duration:.0f}s, 30 fps, chunks of {chunk}s, "
        f"{source.stat().st_size / 1e6:.1f} MB; cores: {os.cpu_count()}",
        flush=True,
    )
    runs: dict[str, list[float]] = {k: [] for k in ("a", "p", "c", "c1", "s1", "s2")}
    cs: list[Chunked] = []
    c1s: list[Chunked] = []
    s1s: list[Chunked] = []
    for i in range(repeat):
        out = tmp / f"a{i}"
        out.mkdir()
        runs["a"].append(one_process(source, out))
        shutil.rmtree(out)
        runs["p"].append(per_rung_pipeline(source))
        cs.append(chunked_pipeline(source, 2, pinned=False))
        runs["c"].append(cs[-1].seconds)
        c1s.append(chunked_pipeline(source, 2, pinned=False, one_thread=True))
        runs["c1"].append(c1s[-1].seconds)
        s1s.append(chunked_pipeline(source, 1, pinned=True))
        runs["s1"].append(s1s[-1].seconds)
        runs["s2"].append(chunked_pipeline(source, 2, pinned=True).seconds)
    med = {k: statistics.median(v) for k, v in runs.items()}
    c_mid = sorted(cs, key=lambda r: r.seconds)[len(cs) // 2]
    c1_mid = sorted(c1s, key=lambda r: r.seconds)[len(c1s) // 2]
    s1_mid = sorted(s1s, key=lambda r: r.seconds)[len(s1s) // 2]
    model = Model.of(s1_mid)
    result = Result(
        name,
        width,
        height,
        duration,
        chunk,
        times=med,
        phases={"c": c_mid.phases, "c1": c1_mid.phases},
        local_cpu_seconds=c_mid.local_cpu_seconds,
        chunks=s1_mid.chunks,
        split=s1_mid.split,
        model=asdict(model),
        hosts={h: (model.seconds(h), model.sized(h)) for h in HOSTS},
    )
    report(result)
    return result


def report(r: Result) -> None:
    t = r.times
    rows = [
        ("a", "one ffmpeg, every rung from one decode"),
        ("p", "per-rung pipeline, 2 workers, upload->done"),
        ("c", "chunked pipeline, 2 workers, upload->done"),
        ("c1", "the same, 1 encoder thread per worker"),
        ("s1", "chunked, 1 worker pinned, 1 thread"),
        ("s2", "chunked, 2 workers pinned, 1 thread each"),
    ]
    print(f"{'':3} {'variant':44} {'seconds':>8}")
    for key, label in rows:
        print(f"{key:3} {label:44} {t[key]:8.2f}")
    print(
        f"\nc/a = {t['c'] / t['a']:.3f}, c1/a = {t['c1'] / t['a']:.3f}  (target <= 1.05);  "
        f"p/a = {t['p'] / t['a']:.3f};  c/p = {t['c'] / t['p']:.3f}"
    )
    for key, phases in r.phases.items():
        print(f"({key}) phases: " + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items()))
    print(f"embedded S3 server + uploader CPU during (c): {r.local_cpu_seconds:.1f}s")
    speedup = t["s1"] / t["s2"]
    print(f"speed-up s1/s2 = {speedup:.2f}x, efficiency {speedup / 2:.0%}  (target >= 1.8x)")
    m = r.model
    print(
        f"split: {r.split}; {r.chunks} chunks; on one core: chunk task {m['per_chunk']:.2f}s "
        f"(overhead {m['overhead']:.2f}s of it), audio {m['audio']:.2f}s, upload+probe "
        f"{m['head']:.2f}s, {m['rungs']} joins+finalize {m['tail']:.2f}s"
    )
    base, base_sized = r.hosts[1]
    print(
        f"\n{'hosts':>5} {'this source':>12} {'speed-up':>9} {'eff.':>5}   "
        f"{'1 chunk/host':>12} {'speed-up':>9} {'eff.':>5}"
    )
    for hosts, (chunks, sized) in r.hosts.items():
        a, b = base / chunks, base_sized / sized
        print(
            f"{hosts:5d} {chunks:11.1f}s {a:8.2f}x {a / hosts:5.0%}   "
            f"{sized:11.1f}s {b:8.2f}x {b / hosts:5.0%}"
        )
    print("(model, from the 1-host run; 2 hosts is measured above)")


def plot(results: list[Result], path: Path) -> None:
    """Bars of the variants per source (as a ratio to one ffmpeg), and the modelled scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, curve) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = ["a", "p", "c", "c1", "s2", "s1"]
    labels = [
        "one ffmpeg",
        "per-rung, 2 w",
        "chunked, 2 w",
        "2 w, 1 thread",
        "2 pinned",
        "1 pinned",
    ]
    width = 0.8 / len(results)
    for i, r in enumerate(results):
        xs = [k + i * width for k in range(len(keys))]
        heights = [r.times[k] / r.times["a"] for k in keys]
        bars.bar(xs, heights, width, label=f"{r.name} ({r.times['a']:.0f}s = 1)")
        for x, h in zip(xs, heights, strict=True):
            bars.text(x, h + 0.02, f"{h:.2f}", ha="center", fontsize=7)
    bars.set_xticks(
        [k + width * (len(results) - 1) / 2 for k in range(len(keys))],
        labels,
        rotation=15,
        fontsize=8,
    )
    bars.axhline(1.05, color="grey", linestyle="--", linewidth=0.8)
    bars.set_ylabel("time / one ffmpeg (upload to completed)")
    bars.set_title("2 cores: encodeq against one ffmpeg")
    bars.legend(fontsize=8)
    for r in results:
        base, base_sized = r.hosts[1]
        line = curve.plot(
            HOSTS,
            [base / r.hosts[h][0] for h in HOSTS],
            marker="o",
            label=f"{r.name}: its {r.chunks} chunks",
        )[0]
        curve.plot(
            HOSTS,
            [base_sized / r.hosts[h][1] for h in HOSTS],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{r.name}: one chunk per host",
        )
        measured = r.times["s1"] / r.times["s2"]
        curve.plot([2], [measured], marker="x", markersize=9, color="black")
    curve.plot(HOSTS, HOSTS, color="grey", linestyle=":", label="linear")
    curve.set_xscale("log", base=2)
    curve.set_yscale("log", base=2)
    curve.set_xticks(HOSTS, [str(h) for h in HOSTS])
    curve.set_xlabel("single-core hosts (x: measured at 2)")
    curve.set_ylabel("speed-up over 1 host")
    curve.set_title("Scaling, modelled from the 1-host run")
    curve.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", choices=sorted(SOURCES), default=[])
    parser.add_argument("--quick", action="store_true", help="24 s 720p only (a busy machine)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median counts")
    parser.add_argument("--plot", type=Path, help="draw the results into this PNG")
    parser.add_argument("--json", type=Path, help="write the results into this JSON file")
    args = parser.parse_args()
    names = ["quick"] if args.quick or not args.source else args.source
    results = []
    with isolated_stack("bench-chunked"), tempfile.TemporaryDirectory() as tmp_dir:
        for name in names:
            results.append(bench(name, Path(tmp_dir), args.repeat))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
