"""A completed job's HLS playlists, rewritten for the browser (uploader/playback.py): ours with
a ticket, segments as presigned S3 URLs. Served ``no-store``: the URLs in them expire."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from uploader.playback import MPEGURL
from uploader.web.state import Web

router = APIRouter()


def playlist(text: str) -> Response:
    return Response(text, media_type=MPEGURL, headers={"Cache-Control": "no-store"})


@router.get("/api/jobs/{job_id}/hls/master.m3u8")
def master_playlist(job_id: str, web: Web) -> Response:
    return playlist(web.playback.master(job_id))


@router.get("/api/jobs/{job_id}/hls/{rendition}/index.m3u8")
def media_playlist(job_id: str, rendition: str, web: Web) -> Response:
    return playlist(web.playback.media(job_id, rendition))
