"""What every route shares, built once per app: settings, storage, the token and its tickets,
playback, the events hub. Kept on ``app.state.web``; routes ask for it as a dependency
(``Web``) rather than closing over it, so a router module stands on its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Request

from config.settings import Settings
from core.manifest import JobStore
from core.storage import Storage
from uploader.playback import Playback
from uploader.web import security
from uploader.web.fleet import FleetControl
from uploader.web.hub import EventHub
from uploader.web.lessons import LessonsControl
from uploader.web.metrics import WebMetrics


@dataclass
class WebState:
    settings: Settings
    #: The one token every API call needs (there is always one: see server.py).
    token: str
    tickets: security.Tickets
    storage: Storage
    jobs: JobStore
    playback: Playback
    hub: EventHub
    #: ``GET /metrics`` (uploader/web/metrics.py); the upload route counts uploads into it.
    metrics: WebMetrics
    #: Security headers for every response (security.py), media from the S3 origin included.
    headers: dict[str, str]
    #: The supervisor of ``encodeq up``; None under ``encodeq serve`` alone.
    fleet: FleetControl | None = None
    #: The lessons' runner under ``encodeq up`` (lessons.py); None under ``encodeq serve`` alone.
    lessons: LessonsControl | None = None

    @classmethod
    def build(
        cls,
        settings: Settings,
        token: str,
        fleet: FleetControl | None = None,
        lessons: LessonsControl | None = None,
    ) -> WebState:
        tickets = security.Tickets(token)
        storage = Storage(settings)

        def play_ticket(job_id: str, valid_for: timedelta) -> str:
            return tickets.issue(f"play:{job_id}", valid_for.total_seconds())

        media = [security.origin_of(settings.s3_public_endpoint or settings.s3_endpoint)]
        hub = EventHub(settings.broker_url, JobStore(Storage(settings)))
        if lessons is not None:  # a lesson's task runs are bars on the timeline too
            lessons.forward_task_events(hub.inject)
        return cls(
            settings=settings,
            token=token,
            tickets=tickets,
            storage=storage,
            jobs=JobStore(storage),
            playback=Playback(storage, ticket=play_ticket),
            hub=hub,
            metrics=WebMetrics(JobStore(storage), hub),
            headers=security.security_headers(media),
            fleet=fleet,
            lessons=lessons,
        )


def web_state(request: Request) -> WebState:
    return request.app.state.web


#: A route parameter of this type receives the app's ``WebState``.
Web = Annotated[WebState, Depends(web_state)]
