"""/v1/events: the platform's NATS events as a server-sent-events stream. An admin may follow
any subject; anyone else gets only its tenant's (its VMs, operations and audit records),
because the stream subscribes to nothing else."""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared import subjects
from shared.auth import Principal
from shared.errors import InvalidRequest

router = APIRouter(prefix="/v1", tags=["events"])
KEEPALIVE_S = 15.0
BATCH = 200  # events at most in one write to a client


def sse_frame(msg, named: bool) -> bytes:
    """One SSE message for a NATS event: ``id:`` its id, ``event:`` its type (the subject's
    last token), ``data:`` its envelope as published (one line of JSON), without parsing it."""
    event_id = (msg.headers or {}).get("Nats-Msg-Id")
    if event_id is None:  # not published through EventPublisher: read it from the envelope
        event_id = str(json.loads(msg.data).get("id", ""))
    name = f"event: {msg.subject.rsplit('.', 1)[-1]}\n" if named else ""
    return f"id: {event_id}\n{name}data: ".encode() + msg.data + b"\n\n"


@router.get("/events")
async def stream_events(
    request: Request,
    subject: str = Query(subjects.ALL_EVENTS, description="NATS subject filter under vmflow.evt"),
    named: bool = Query(True, description=(
        "false: no `event:` line, so a browser's EventSource gets every message through onmessage "
        "(the type stays in the data)")),
    p: Platform = Depends(get_platform),
    who: Principal = Depends(principal),
):
    """Each NATS event becomes one SSE message: ``event:`` its type, ``data:`` its envelope."""
    if not subject.startswith(subjects.EVENTS_ROOT + ".") or " " in subject:
        raise InvalidRequest(f"subject must start with '{subjects.EVENTS_ROOT}.'")
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1000)

    def on_message(msg) -> None:
        if subjects.subject_matches(subject, msg.subject) and not queue.full():
            queue.put_nowait(sse_frame(msg, named))  # a slow client loses events rather than stalling NATS

    # A tenant's stream follows only its own subjects; its filter narrows them further.
    roots = (subject,) if who.is_admin else subjects.tenant_event_roots(who.tenant)
    leaves = [await p.streams.follow(root, on_message) for root in roots]

    async def body():
        try:
            yield b": connected\n\n"
            while True:
                try:
                    frames = [await asyncio.wait_for(queue.get(), KEEPALIVE_S)]
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": keepalive\n\n"
                    continue
                while not queue.empty() and len(frames) < BATCH:  # what is waiting goes out in one write
                    frames.append(queue.get_nowait())
                yield b"".join(frames)
        finally:
            for leave in leaves:
                await leave()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
