"""The job document the API returns: the manifest as stored, the live progress of running encodes
from the hub's monitor laid over it, and the job's URLs."""

from __future__ import annotations

from typing import Any

from core.job_model import Manifest
from uploader.web.state import WebState


def job_document(web: WebState, manifest: Manifest) -> dict[str, Any]:
    doc = manifest.model_dump(mode="json")
    live = web.hub.monitor.job(manifest.job_id)
    if live is not None:  # fps/speed/progress of running encodes, fresher than the records
        by_name = {r.name: r for r in live.renditions.values()}
        for r in doc["renditions"]:
            view = by_name.get(r["name"])
            if view is not None and r["state"] == "encoding":
                r["progress"] = max(r["progress"], view.progress)
                r["fps"], r["speed"] = view.fps, view.speed
    return doc


def job_links(web: WebState, manifest: Manifest) -> dict[str, str]:
    """The job's URLs; the playlist's carries a playback ticket, so a ``<video>`` plays it; the
    poster (once the job has one) is a presigned URL, like the segments."""
    job_id = manifest.job_id
    master = web.playback.master_url(job_id, manifest.source.duration)
    links = {"job": f"/api/jobs/{job_id}", "master_playlist": master}
    if (poster := web.playback.poster_url(manifest)) is not None:
        links["poster"] = poster
    return links
