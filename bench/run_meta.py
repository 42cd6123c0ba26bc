"""What a bench run was, printed first and kept in its JSON: when, which tree, how many cores,
then what the bench says of itself (bench_sweep.py, bench_capacity.py)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def git_revision(root: Path) -> str:
    """``git describe --always --dirty`` of ``root``, or ``?`` outside a checkout."""
    rev = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return rev or "?"


def run_meta(tree: str, **fields: Any) -> dict[str, Any]:
    """``started``, ``tree``, ``cores``, then ``fields``: printed a line each, and returned."""
    meta = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "tree": tree,
        "cores": os.cpu_count(),
        **fields,
    }
    for key, value in meta.items():
        print(f"{key:12} {value}")
    return meta
