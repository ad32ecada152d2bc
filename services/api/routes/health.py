"""/healthz (the process answers) and /readyz (its dependencies answer too)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from services.api.platform import Platform, get_platform
from shared.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(p: Platform = Depends(get_platform)):
    async def database() -> None:
        await asyncio.to_thread(p.inventory.ping)

    async def nats() -> None:
        await p.nats.flush(timeout=2)

    async def temporal() -> None:
        await p.temporal.service_client.check_health(timeout=timedelta(seconds=2))

    checks = {}
    for name, probe in (("database", database), ("nats", nats), ("temporal", temporal)):
        try:
            await asyncio.wait_for(probe(), 3)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"failing: {type(exc).__name__}"
    failing = [f"{name} {state}" for name, state in checks.items() if state != "ok"]
    if not failing:
        return {"ready": True, "checks": checks}
    # The error contract's shape, with the checks beside it for whoever watches readiness.
    error = {"code": ServiceUnavailable.code, "message": f"not ready: {', '.join(failing)}"}
    return JSONResponse({"error": error, "ready": False, "checks": checks}, status_code=503)
