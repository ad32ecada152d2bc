"""One NATS subscription per subject filter in an API process, however many event streams
follow it. With a subscription per stream, each event was delivered (and parsed) once per
connected client; here NATS hands it over once and the process passes it to each stream."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

Listener = Callable[[Msg], None]


class EventFanout:
    def __init__(self, nc: NatsClient) -> None:
        self._nc = nc
        self._listeners: dict[str, set[Listener]] = {}
        self._subscriptions: dict[str, object] = {}
        self._lock = asyncio.Lock()

    async def follow(self, subject: str, listener: Listener) -> Callable[[], Awaitable[None]]:
        """Call ``listener`` (which must not block) with each message on ``subject`` until the
        returned function is awaited."""
        async with self._lock:
            listeners = self._listeners.get(subject)
            if listeners is None:
                listeners = self._listeners[subject] = set()

                async def deliver(msg: Msg) -> None:
                    for each in tuple(listeners):
                        each(msg)

                self._subscriptions[subject] = await self._nc.subscribe(subject, cb=deliver)
            listeners.add(listener)

        async def leave() -> None:
            async with self._lock:
                listeners.discard(listener)
                if not listeners and self._listeners.get(subject) is listeners:
                    del self._listeners[subject]
                    await self._subscriptions.pop(subject).unsubscribe()

        return leave

    def subscriptions(self) -> int:
        """How many NATS subscriptions the streams share now."""
        return len(self._subscriptions)
