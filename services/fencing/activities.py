"""The fencer's activities, on the task queue ``fencing`` (never served by a host it may fence)."""

from __future__ import annotations

from pathlib import Path

import structlog
from temporalio import activity

from services.fencing.agent import load_config, power
from services.fencing.settings import FencerSettings
from shared import events
from shared.errors import FenceFailed
from shared.failover import FenceRequest, FenceResult
from shared.messaging import EventPublisher

log = structlog.get_logger(__name__)


class FenceActivities:
    def __init__(self, settings: FencerSettings, publisher: EventPublisher) -> None:
        self._settings = settings
        self._events = publisher

    @activity.defn(name="fence.run")
    async def run(self, req: FenceRequest) -> FenceResult:
        """Run the host's fence agent and confirm the result with its status. Idempotent (off
        twice is off). Raises FenceFailed (retryable), InvalidRequest when no agent is set up."""
        config = load_config(Path(self._settings.fence_config), req.host_id)
        try:
            state = await power(config, req.action, self._settings.fence_timeout_s)
        except FenceFailed as exc:
            log.warning("fencing failed", host_id=req.host_id, action=req.action, error=exc.message)
            await self._publish(events.HostFenced(req.host_id, req.action, "failed", exc.message))
            raise
        log.info("fenced", host_id=req.host_id, action=req.action, power=state)
        await self._publish(events.HostFenced(req.host_id, req.action, "fenced", f"power {state}"))
        return FenceResult(req.host_id, req.action, state)

    async def _publish(self, event: events.HostFenced) -> None:
        try:
            await events.publish(self._events, event)
        except Exception as exc:  # the history keeps the outcome either way
            log.warning("fence event not published", error=str(exc))
