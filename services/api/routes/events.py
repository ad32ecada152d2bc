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

    async def on_message(msg) -> None:
        if not subjects.subject_matches(subject, msg.subject):
            return
        if not queue.full():  # a slow client loses events rather than stalling NATS
            queue.put_nowait(msg.data)

    # A tenant's stream subscribes only to its own subjects; its filter narrows them further.
    roots = (subject,) if who.is_admin else subjects.tenant_event_roots(who.tenant)
    subs = [await p.nats.subscribe(root, cb=on_message) for root in roots]

    async def body():
        try:
            yield b": connected\n\n"
            while not await request.is_disconnected():
                try:
                    data = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                envelope = json.loads(data)
                name = f"event: {envelope.get('type', 'event')}\n" if named else ""
                yield f"id: {envelope.get('id', '')}\n{name}data: {json.dumps(envelope)}\n\n".encode()
        finally:
            for sub in subs:
                await sub.unsubscribe()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
