"""The sweep's results (bench_sweep.py): what a source's runs keep, issue 12's targets, the tables
and the plot."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweep_media import Source

#: Issue 12's targets: pipeline / one ffmpeg by length, two single-core workers / one from 30 s
#: up, serial head + tail of a 5-minute 720p source.
SHORT_S, LONGEST_S = 20.0, 600.0
SCALING_TARGET, SCALING_FROM_S = 1.9, 30.0
SERIAL_TARGET_S = 3.0


def ratio_target(length: float) -> float | None:
    """c/a at most this (None: no target past 10 minutes)."""
    if length < SHORT_S:
        return 1.15
    return 1.05 if length <= LONGEST_S else None


@dataclass
class Pipeline:
    """One job of the pipeline in its default mode, read back from its manifest and records."""

    job_id: str
    seconds: float
    upload_seconds: float
    mode: str
    mode_reason: str | None = None
    #: The manifest's chunk plan as stored (None: the job went per rung).
    plan: dict[str, Any] | None = None
    #: Wall time of each video chunk's task (its record's ``seconds``), and the audio task's.
    chunk_seconds: list[float] = field(default_factory=list)
    audio_seconds: float | None = None
    #: The serial parts (s). Chunked: head = job created -> first chunk task started, tail = last
    #: chunk task (audio included) completed -> job completed. Per rung: head = job created ->
    #: first rendition started (its event; None if the event was lost), tail = last rendition
    #: completed -> job completed.
    head: float | None = None
    tail: float | None = None
    local_cpu_seconds: float = 0.0

    @property
    def chunk_lengths(self) -> list[float]:
        return list((self.plan or {}).get("durations") or [])

    @property
    def serial(self) -> float | None:
        return None if self.head is None or self.tail is None else self.head + self.tail


@dataclass
class Point:
    """One source, and every run of it: (a) one ffmpeg, (c) the pipeline, (s1/s2) scaling."""

    source: Source
    sweeps: list[str]
    a: list[float] = field(default_factory=list)
    c: list[float] = field(default_factory=list)
    s1: list[float] = field(default_factory=list)
    s2: list[float] = field(default_factory=list)
    pipelines: list[Pipeline] = field(default_factory=list)
    #: variant ("a" or "c") -> rung -> {"psnr": dB, "ssim": 0..1}
    quality: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    make_seconds: float = 0.0
    order: list[str] = field(default_factory=list)
    error: str | None = None

    def median(self, key: str) -> float | None:
        values = getattr(self, key)
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        a, c = self.median("a"), self.median("c")
        return None if a is None or c is None else c / a

    @property
    def scaling(self) -> float | None:
        s1, s2 = self.median("s1"), self.median("s2")
        return None if s1 is None or s2 is None else s1 / s2

    @property
    def pipeline(self) -> Pipeline | None:
        """The run of median time (its plan and serial parts are the ones reported)."""
        runs = sorted(self.pipelines, key=lambda p: p.seconds)
        return runs[len(runs) // 2] if runs else None

    def serial_target(self) -> float | None:
        s = self.source
        return SERIAL_TARGET_S if s.length == 300 and min(s.width, s.height) == 720 else None

    def misses(self) -> list[str]:
        """The targets this source missed, in words."""
        found = []
        target, ratio = ratio_target(self.source.length), self.ratio
        if target is not None and ratio is not None and ratio > target:
            found.append(f"c/a {ratio:.3f} > {target}")
        if self.scaling is not None and self.scaling < SCALING_TARGET:
            found.append(f"s1/s2 {self.scaling:.2f} < {SCALING_TARGET}")
        serial = self.pipeline.serial if self.pipeline else None
        if self.serial_target() is not None and serial is not None and serial >= SERIAL_TARGET_S:
            found.append(f"head+tail {serial:.2f}s >= {SERIAL_TARGET_S}s")
        return found

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        pipeline = self.pipeline
        doc.update(
            name=self.source.name,
            medians={k: self.median(k) for k in ("a", "c", "s1", "s2")},
            ratio=self.ratio,
            ratio_target=ratio_target(self.source.length),
            scaling=self.scaling,
            scaling_target=SCALING_TARGET if self.source.length >= SCALING_FROM_S else None,
            serial=pipeline.serial if pipeline else None,
            serial_target=self.serial_target(),
            misses=self.misses(),
        )
        return doc


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _chunks(p: Pipeline | None) -> str:
    if p is None or not p.chunk_lengths:
        return "-"
    lengths = ",".join(f"{d:.0f}" for d in p.chunk_lengths)
    return f"{len(p.chunk_lengths)}: {lengths if len(lengths) <= 22 else lengths[:20] + '..'}"


def point_line(point: Point) -> str:
    """One row of the timing table."""
    s, p = point.source, point.pipeline
    target = ratio_target(s.length)
    share = p.serial / p.seconds if p is not None and p.serial is not None else None
    mark = "MISS" if point.misses() else ("ERROR" if point.error else "ok")
    return (
        f"{s.length:6g} {s.rate:>6} {s.gop:8} {_num(point.median('a'), '7.2f')} "
        f"{_num(point.median('c'), '7.2f')} {_num(point.ratio, '6.3f')} "
        f"{'<=' + str(target) if target else '-':>6} {p.mode if p else '-':9} {_chunks(p):26} "
        f"{_num(p.head if p else None, '5.2f')} {_num(p.tail if p else None, '5.2f')} "
        f"{_num(share and 100 * share, '5.1f')}% {_num(point.scaling, '5.2f')} {mark}"
    )


HEADER = (
    f"{'len s':>6} {'fps':>6} {'gop':8} {'a s':>7} {'c s':>7} {'c/a':>6} {'target':>6} "
    f"{'mode':9} {'chunks: lengths (s)':26} {'head':>5} {'tail':>5} {'serial':>6} "
    f"{'s1/s2':>5} targets"
)


def print_tables(points: list[Point]) -> None:
    """Timing per sweep, then quality per rung, then the misses."""
    for sweep in ("length", "rate x gop"):
        rows = [p for p in points if sweep in p.sweeps]
        if rows:
            print(f"\n-- {sweep} sweep (a: one ffmpeg, c: pipeline, default mode) --\n{HEADER}")
            for point in rows:
                print(point_line(point))
    print(
        f"\ntargets: c/a <= 1.15 below {SHORT_S:g} s, <= 1.05 from {SHORT_S:g} s to "
        f"{LONGEST_S:g} s; s1/s2 >= {SCALING_TARGET} from {SCALING_FROM_S:g} s; "
        f"head+tail < {SERIAL_TARGET_S:g} s at 300 s 720p. serial = (head+tail) / c."
    )
    print_plans(points)
    print_quality(points)
    missed = [(p.source.name, m) for p in points for m in p.misses()]
    errors = [(p.source.name, p.error) for p in points if p.error]
    print(f"\n{len(missed)} target(s) missed" + (":" if missed else "."))
    for name, what in missed:
        print(f"  MISS {name}: {what}")
    for name, error in errors:
        print(f"  ERROR {name}: {error}")


def print_plans(points: list[Point]) -> None:
    """Why each job was encoded as it was: the plan's split and reason, a mode's hand-over."""
    rows = [(p.source.name, p.pipeline) for p in points if p.pipeline]
    rows = [(name, job) for name, job in rows if job.plan or job.mode_reason]
    if rows:
        print("\n-- chunk plans (c's median run) --")
    for name, job in rows:
        plan = job.plan or {}
        seconds = [f"{s:.1f}" for s in job.chunk_seconds]
        print(
            f"{name:24} {job.mode}, split {plan.get('split', '-')}, chunk tasks {seconds} s, "
            f"audio {_num(job.audio_seconds, '.1f')} s; reason: {plan.get('reason') or '-'}"
            + (f"; mode: {job.mode_reason}" if job.mode_reason else "")
        )


def print_quality(points: list[Point]) -> None:
    rows = [p for p in points if "a" in p.quality and "c" in p.quality]
    if not rows:
        return
    print(
        f"\n-- quality against the scaled source (c - a; '*': c more than 0.1 dB below a) --\n"
        f"{'source':24} {'rung':6} {'PSNR a':>7} {'PSNR c':>7} {'d dB':>6} "
        f"{'SSIM a':>7} {'SSIM c':>7} {'d SSIM':>7}"
    )
    for point in rows:
        for rung, a in point.quality["a"].items():
            c = point.quality["c"].get(rung)
            if c is None:
                print(f"{point.source.name:24} {rung:6} (no such rung in c)")
                continue
            d_psnr, d_ssim = c["psnr"] - a["psnr"], c["ssim"] - a["ssim"]
            print(
                f"{point.source.name:24} {rung:6} {a['psnr']:7.2f} {c['psnr']:7.2f} "
                f"{d_psnr:+6.2f} {a['ssim']:7.4f} {c['ssim']:7.4f} {d_ssim:+7.4f}"
                f"{' *' if d_psnr < -0.1 else ''}"
            )


def plot(points: list[Point], path: Path, title: str) -> None:
    """c/a against length (log x) with the target, the frame-rate/GOP points at their length,
    and below it the serial head and tail stacked as a share of the pipeline's time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    sweep = sorted((p for p in points if "length" in p.sweeps and p.ratio), key=_length)
    xs = [p.source.length for p in sweep]
    top.plot(xs, [p.ratio for p in sweep], marker="o", label="length sweep (29.97 fps, closed)")
    for x, p in zip(xs, sweep, strict=True):
        mode = p.pipeline.mode if p.pipeline else ""
        top.annotate(
            mode,
            (x, p.ratio or 0),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    _rate_gop_points(top, [p for p in points if "rate x gop" in p.sweeps and p.ratio])
    lo, hi = min([10.0, *xs]), max([LONGEST_S, *xs])
    top.step(
        [lo, SHORT_S, LONGEST_S],
        [1.15, 1.05, 1.05],
        where="post",
        color="grey",
        linestyle="--",
        label="target",
    )
    top.axhline(1.0, color="black", linewidth=0.5)
    top.set_xscale("log")
    top.set_ylabel("pipeline / one ffmpeg (c/a)")
    top.set_title(title, fontsize=10)
    top.legend(fontsize=7, ncol=2)
    _serial_bars(bottom, sweep)
    bottom.set_xlim(lo * 0.85, hi * 1.15)
    ticks = sorted({*xs, *(p.source.length for p in points if p.ratio)})
    bottom.set_xticks(ticks, [f"{t:g}" for t in ticks])
    bottom.set_xlabel("source length (s, log)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"\nplot: {path}")


def _length(point: Point) -> float:
    return point.source.length


def _rate_gop_points(ax: Any, points: list[Point]) -> None:
    """Each frame rate a colour, each GOP kind a marker, spread a little around their length."""
    rates = sorted({p.source.rate for p in points}, key=lambda r: float(r) if r != "vfr" else 0)
    markers = {"closed": "s", "open": "^", "closed-b": "D"}
    for p in points:
        i = rates.index(p.source.rate)
        x = p.source.length * 1.035 ** (i - (len(rates) - 1) / 2)
        ax.scatter(
            [x], [p.ratio], marker=markers.get(p.source.gop, "x"), s=28, color=f"C{i + 1}", zorder=3
        )
    for i, rate in enumerate(rates):
        ax.scatter([], [], color=f"C{i + 1}", marker="o", s=20, label=f"{rate} fps")
    for gop in sorted({p.source.gop for p in points}):
        ax.scatter([], [], color="grey", marker=markers.get(gop, "x"), s=20, label=f"{gop} GOP")


def _serial_bars(ax: Any, points: list[Point]) -> None:
    """Head and tail as a share of the pipeline's time, stacked, at each length of the sweep."""
    rows = [(p.source.length, p.pipeline) for p in points if p.pipeline and p.pipeline.serial]
    xs = [x for x, _ in rows]
    widths = [x * 0.18 for x in xs]
    upload = [100 * p.upload_seconds / p.seconds for _, p in rows]
    head = [100 * (p.head or 0) / p.seconds for _, p in rows]
    tail = [100 * (p.tail or 0) / p.seconds for _, p in rows]
    ax.bar(xs, head, widths, label="head: job created -> first encode started")
    ax.bar(xs, tail, widths, bottom=head, label="tail: last encode done -> job completed")
    below = [h + t for h, t in zip(head, tail, strict=True)]
    ax.bar(xs, upload, widths, bottom=below, color="lightgrey", label="upload (before the head)")
    ax.set_ylabel("serial share of c (%)")
    ax.legend(fontsize=7)
