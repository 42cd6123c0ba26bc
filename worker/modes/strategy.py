"""What an encode mode supplies to the shared pipeline: a plan, and a fan-out.

The probe task (worker/probe_task.py) asks the job's mode for its ``plan`` from the source and
what the probe found, records it in the manifest, then calls ``fan_out``, which publishes the
mode's tasks; the mode's own tasks fan back in and publish finalize (worker/finalize.py). A mode
that cannot do its work after all returns ``FallBack``; the registry (registry.py) then hands the
job to per-rung mode, which encodes any source the probe accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.job_model import ChunkPlan, Manifest, ProbeResult
from core.manifest import JobStore
from core.storage import Storage


class ModePlan(Protocol):
    """What the manifest records of a mode's plan (the plan itself may hold more)."""

    @property
    def chunks(self) -> ChunkPlan | None:
        """The chunk plan, when the source is cut into chunks."""
        ...

    @property
    def frames(self) -> int | None:
        """The source's video frames, when the plan counted them."""
        ...


@dataclass(frozen=True)
class FanOut:
    """A job at its fan-out: recorded with its plan (so every task finds it), its local source,
    and the probe task's scratch folder."""

    storage: Storage
    jobs: JobStore
    manifest: Manifest
    source: Path
    folder: Path

    @property
    def job_id(self) -> str:
        return self.manifest.job_id


@dataclass(frozen=True)
class FallBack:
    """The mode gives the job up (its tasks already published find it changed and do nothing)."""

    reason: str


class EncodeStrategy(Protocol):
    def plan(self, source: Path, probe: ProbeResult, consumers: int) -> ModePlan:
        """How the mode will encode this source on a fleet of ``consumers`` encode consumers
        (recorded before any task is published)."""
        ...

    def fan_out(self, job: FanOut, plan: ModePlan) -> FallBack | None:
        """Publish the mode's tasks for the job; ``FallBack`` when the mode cannot after all."""
        ...
