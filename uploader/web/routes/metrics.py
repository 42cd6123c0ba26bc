"""``GET /metrics``: the web service's Prometheus metrics (uploader/web/metrics.py says what, and
why it needs no token)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from uploader.web.state import Web

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(web: Web) -> Response:
    """Prometheus' text format; a plain function: reading the job store blocks (a thread)."""
    return Response(web.metrics.expose(), media_type=CONTENT_TYPE_LATEST)
