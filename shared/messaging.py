"""NATS plumbing shared by the services: connecting, the event stream, typed request/reply.

Events are facts under ``vmflow.evt.>`` kept by one JetStream stream; publishers set
``Nats-Msg-Id`` so a retried publish is stored once. Service calls go through ``nats.micro``
endpoints; errors travel as (code, description) and are rebuilt into ``shared.errors`` types.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import (
    BadRequestError,
    BucketNotFoundError,
    NoStreamResponseError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue
from nats.micro.request import Request

from shared import codec, metrics, subjects
from shared.errors import ServiceUnavailable, Timeout, VmflowError, error_from_code
from shared.settings import CommonSettings

T = TypeVar("T")
log = structlog.get_logger(__name__)

ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
EVENT_RETENTION = timedelta(days=7)
# A JetStream stream whose leader was lost answers nothing until its peers elect another (4 to 9 s
# on a NATS cluster): publishes keep trying this long, deduplicated by their message id.
JETSTREAM_ELECTION_S = 12.0
PUBLISH_TIMEOUT_S = 5.0  # one attempt's wait for the stream's acknowledgement
JETSTREAM_PENDING = (NoStreamResponseError, NatsTimeoutError, NoRespondersError, ServiceUnavailableError)


async def connect(settings: CommonSettings, name: str) -> NatsClient:
    """Connect for a long-lived control-plane process: reconnect forever, ping often."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", error=str(exc))

    # nats-py calls these once per lost and per regained connection, not per failed attempt (and
    # the first once more when the process closes its connection on the way out).
    async def on_disconnected() -> None:
        metrics.NATS_DISCONNECTS.inc()
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        metrics.NATS_RECONNECTS.inc()
        log.info("nats reconnected")

    return await nats.connect(
        servers(settings.nats_url),
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        ping_interval=10,
        max_outstanding_pings=3,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )


def servers(nats_url: str) -> list[str]:
    """``nats://a:4222,nats://b:4222``: every server of a cluster, to try in turn."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


async def ensure_event_stream(js: JetStreamContext, stream: str, replicas: int = 1) -> None:
    """Create the event stream if it does not exist yet; idempotent across replicas."""
    config = StreamConfig(
        name=stream,
        subjects=[subjects.ALL_EVENTS],
        max_age=EVENT_RETENTION.total_seconds(),
        duplicate_window=120.0,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except BadRequestError as exc:
        if exc.err_code != 10058:  # stream name already in use
            raise
        await js.update_stream(config)


class EventPublisher:
    """Publishes facts to the event stream. Each event gets an envelope with a stable id.
    ``patience_s``: how long a publish keeps trying while the stream elects a leader; a caller
    that must not stall (a heartbeat loop, the liveness monitor) gives a short one."""

    def __init__(self, js: JetStreamContext, source: str, patience_s: float = JETSTREAM_ELECTION_S) -> None:
        self._js = js
        self._source = source
        self._patience_s = patience_s

    async def publish(self, subject: str, data: dict[str, Any], event_id: str | None = None) -> None:
        event_id = event_id or uuid.uuid4().hex
        envelope = {
            "id": event_id,
            "type": subject.rsplit(".", 1)[-1],
            "subject": subject,
            "source": self._source,
            "time_s": time.time(),
            "data": data,
        }
        payload = json.dumps(envelope).encode()
        give_up_s = time.monotonic() + self._patience_s
        while True:
            try:
                left_s = max(0.2, give_up_s - time.monotonic())
                await self._js.publish(subject, payload, timeout=min(PUBLISH_TIMEOUT_S, left_s),
                                       headers={"Nats-Msg-Id": event_id})
                return
            except JETSTREAM_PENDING:
                if time.monotonic() >= give_up_s:
                    raise
                await asyncio.sleep(0.25)


async def request(
    nc: NatsClient, subject: str, payload: Any, result_type: type[T], timeout_s: float = 5.0
) -> T:
    """Typed request/reply to a ``nats.micro`` endpoint; raises ``shared.errors`` types."""
    try:
        reply = await nc.request(subject, codec.encode(payload), timeout=timeout_s)
    except NoRespondersError as exc:
        raise ServiceUnavailable(f"no service answers on {subject}") from exc
    except NatsTimeoutError as exc:
        raise Timeout(f"{subject} did not answer within {timeout_s:g} s") from exc
    headers = reply.headers or {}
    if ERROR_CODE_HEADER in headers:
        raise error_from_code(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
    return codec.decode(result_type, reply.data)


def endpoint(
    request_type: type[T], handler: Callable[[T], Awaitable[Any]], concurrent: bool = False,
) -> Callable[[Request], Awaitable[None]]:
    """Adapt a typed coroutine to a ``nats.micro`` handler: decode, call, encode; errors go
    back as (code, message) so callers rebuild the same error type. ``concurrent``: each
    request is handled in a task of its own, so one that waits (on a KV write, say) does not
    hold up the ones behind it; NATS hands an endpoint its requests one at a time otherwise."""

    async def handle(req: Request) -> None:
        try:
            argument = codec.decode(request_type, req.data) if request_type is not type(None) else None
            result = await handler(argument)  # type: ignore[arg-type]
            await req.respond(codec.encode(result))
        except VmflowError as exc:
            await req.respond_error(exc.code, exc.message)
        except ValueError as exc:
            await req.respond_error("invalid_request", str(exc).splitlines()[0])
        except MaxPayloadError:
            await req.respond_error("internal", "the answer is larger than a NATS message may be")
        except Exception as exc:  # a bug: say so without leaking internals
            log.exception("endpoint failed", subject=req.subject)
            await req.respond_error("internal", f"internal error ({type(exc).__name__})")

    if not concurrent:
        return handle
    running: set[asyncio.Task] = set()  # referenced until done

    async def start(req: Request) -> None:
        task = asyncio.get_running_loop().create_task(handle(req))
        running.add(task)
        task.add_done_callback(running.discard)

    return start


async def key_value_bucket(js: JetStreamContext, bucket: str, ttl_s: float | None = None,
                           replicas: int = 1) -> KeyValue:
    """A KV bucket that keeps the latest value per key; created on first use."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=replicas))


async def heartbeat_bucket(js: JetStreamContext, bucket: str, replicas: int = 1) -> KeyValue:
    """Each host's latest heartbeat. Hosts gone for a day drop out on their own."""
    return await key_value_bucket(js, bucket, ttl_s=24 * 3600, replicas=replicas)
