"""Benchmark: the pipeline against plain ffmpeg doing the same ladder, side by side in one run.

Same source, same rungs, same encoder settings (worker/encoder.py builds every command):

  (a) one ffmpeg process, decode once, every rung an output of one filter graph (split)
  (b) one ffmpeg process per rung, two at a time (what two workers do, minus queue and storage)
  (c) the pipeline with two workers (one process each), from upload to job completed

and prints the table with c/b (what the queue and storage add; target <= 1.10) and c/a (what one
decode per rung costs on top). Runs on a vhost and embedded S3 server of its own.

    python bench/bench_pipeline.py [--width 1280 --height 720 --duration 30 --repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))  # the suite's helpers: one stack, fleet, media recipe

from support.fleet import worker_fleet  # noqa: E402
from support.media import make_video  # noqa: E402
from support.stack import isolated_stack  # noqa: E402
from timed_job import run_job  # noqa: E402

from core.layout import PLAYLIST_NAME  # noqa: E402


def make_source(path: Path, width: int, height: int, duration: float) -> Path:
    """testsrc2 + tone at 30 fps, encoded well (CRF 18): a source worth encoding again."""
    return make_video(path, width, height, duration, fps=30, preset="fast", crf=18)


def one_process_all_rungs(source: Path, out: Path) -> float:
    """(a) decode once: split the decoded video into every rung's scaler and encoder."""
    import ffmpeg

    from config.ladder import choose_renditions
    from config.settings import get_settings
    from worker import encoder, process
    from worker.probe import SAFE_INPUT_OPTIONS, probe

    settings = get_settings()
    result = probe(source, settings)
    plans = choose_renditions(result.width, result.height)
    stream = ffmpeg.input(str(source), **SAFE_INPUT_OPTIONS)
    branches = stream["v:0"].filter_multi_output("split", len(plans))
    outputs = []
    for i, plan in enumerate(plans):
        folder = out / plan.name
        folder.mkdir(parents=True)
        streams = [encoder.scaled(branches.stream(i), plan)]
        streams += [stream["a:0"]] if result.has_audio else []
        options = encoder.output_options(result, plan, folder, settings)
        outputs.append(ffmpeg.output(*streams, str(folder / PLAYLIST_NAME), **options))
    argv = encoder.with_progress(ffmpeg.merge_outputs(*outputs))
    started = time.perf_counter()
    process.run(argv, timeout_s=3600, on_progress=lambda block: None)
    return time.perf_counter() - started


def process_per_rung(source: Path, out: Path, parallel: int = 2) -> float:
    """(b) each rung its own ffmpeg (its own decode), ``parallel`` at a time."""
    from config.ladder import choose_renditions
    from config.settings import get_settings
    from worker import encoder, process
    from worker.probe import probe

    settings = get_settings()
    result = probe(source, settings)
    plans = choose_renditions(result.width, result.height)

    def run(plan) -> None:
        folder = out / plan.name
        folder.mkdir(parents=True)
        argv = encoder.encode_args(source, result, plan, folder, settings)
        process.run(argv, timeout_s=3600, on_progress=lambda block: None)

    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(run, plans))
    return time.perf_counter() - started


def pipeline(source: Path, workers: int = 2) -> tuple[float, dict[str, str]]:
    """(c) upload -> probe -> encode x N on competing workers -> finalize -> completed."""
    from core.manifest import JobStore
    from core.storage import Storage

    with worker_fleet(workers):
        run = run_job(source, mode="per-rung")
    full = JobStore(Storage()).load(run.job_id)
    assert full is not None
    return run.seconds, {r.name: r.worker or "" for r in full.renditions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median counts")
    args = parser.parse_args()

    with isolated_stack("bench") as _env, tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        source = make_source(tmp / "source.mp4", args.width, args.height, args.duration)
        print(
            f"source: {args.width}x{args.height}, {args.duration:.0f}s, 30 fps, "
            f"{source.stat().st_size / 1e6:.1f} MB; cores: {os.cpu_count()}"
        )
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        placement: dict[str, str] = {}
        for run in range(args.repeat):
            for key, fn in (("a", one_process_all_rungs), ("b", process_per_rung)):
                out = tmp / f"{key}{run}"
                out.mkdir()
                times[key].append(fn(source, out))
                shutil.rmtree(out)
            elapsed, placement = pipeline(source)
            times["c"].append(elapsed)
        med = {key: statistics.median(values) for key, values in times.items()}
        rows = [
            ("a", "one ffmpeg, every rung from one decode", med["a"]),
            ("b", "one ffmpeg per rung, two at a time", med["b"]),
            ("c", "pipeline, 2 workers, upload to completed", med["c"]),
        ]
        print(f"\n{'':2} {'variant':44} {'seconds':>8}")
        for key, label, seconds in rows:
            print(f"{key:2} {label:44} {seconds:8.2f}")
        print(f"\nc/b = {med['c'] / med['b']:.3f}  (target <= 1.10: the queue and storage)")
        print(f"c/a = {med['c'] / med['a']:.3f}  (one decode per rung vs one decode in all)")
        print("rungs per worker in (c):", placement)


if __name__ == "__main__":
    main()
