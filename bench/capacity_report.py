"""The printed tables of bench_capacity.py: per-job fits, and the capacity model's figures."""

from __future__ import annotations

from typing import Any

#: The counts the printed table shows (the JSON keeps every one).
SHOWN = (
    "cpu.workers_s",
    "cpu.s3_server_s",
    "published.",
    "runs.task.",
    "events.total",
    "event.rendition.progress",
    "events.",
    "celeryev.task",
    "s3.requests",
    "s3.GET",
    "s3.PUT",
    "s3.HEAD",
    "s3.LIST",
    "s3.DELETE",
    "s3.POST",
    "s3.BUCKET",
    "s3.PUT.",
    "s3.bytes_in",
    "s3.bytes_out",
    "plan.chunks",
)


def _shown(names: set[str]) -> list[str]:
    order: list[str] = []
    for want in SHOWN:
        hits = [want] if not want.endswith(".") else sorted(n for n in names if n.startswith(want))
        order += [n for n in hits if n in names and n not in order and not n.endswith("_bytes")]
    return order


def _table(title: str, columns: dict[str, dict[str, str]], names: list[str]) -> None:
    print(f"\n{title}")
    print(f"{'count':34}" + "".join(f"{m:>30}" for m in columns))
    for name in names:
        label = name + (" (MB)" if "bytes" in name else "")
        print(f"{label:34}" + "".join(f"{col.get(name, ''):>30}" for col in columns.values()))


def print_fits(doc: dict[str, Any]) -> None:
    """Per job = a + b * seconds of source, as measured and fitted: a column per mode."""
    fits = doc["fits"]
    names = _shown({k for f in fits.values() for k in f})
    columns = {}
    for mode, found in fits.items():
        cells = {}
        for name, f in found.items():
            scale = 1e6 if "bytes" in name else 1.0
            cells[name] = f"{f['a'] / scale:.4g} + {f['b'] / scale:.4g} s"
        columns[mode] = cells
    _table(
        "per job = a + b * s (s: seconds of source), least squares over the lengths", columns, names
    )


def print_model(m: dict[str, Any]) -> None:
    """The model's figures per mode, and what saturates first."""
    target = m["target"]
    print(f"\nmodel: {target['uploads_per_hour']:,} uploads/h of {target['source_s']:g} s")
    print(f"assumed: {m['assumed']}")
    modes = m["modes"]
    columns = {
        mode: {k: f"{v / (1e6 if 'bytes' in k else 1):.5g}" for k, v in f["per_job"].items()}
        for mode, f in modes.items()
    }
    names = _shown({k for f in modes.values() for k in f["per_job"]})
    _table(
        "per job at the target's length, as modelled (clock-driven counts from their rate, "
        "chunk-record reads N^2, many hosts)",
        columns,
        names,
    )
    for mode, figures in modes.items():
        print(f"\n[{mode}]")
        for key, value in figures.items():
            if key not in ("saturation", "per_job"):
                print(f"  {key:34} {value}")
        print("  saturates first (demand / reference):")
        for name, use in figures["saturation"]:
            print(f"    {use:8.3f}  {name}")
