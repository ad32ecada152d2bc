"""Temporal plumbing for service processes (never imported by workflow code)."""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from shared.errors import VmflowError
from shared.settings import CommonSettings


async def connect_temporal(settings: CommonSettings) -> Client:
    return await Client.connect(settings.temporal_address, namespace=settings.temporal_namespace)


class _TranslateErrors(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        try:
            return await super().execute_activity(input)
        except VmflowError as exc:
            # Workflows see the platform's code and message; Temporal retries only what may help.
            raise ApplicationError(
                exc.message, type=exc.code, non_retryable=not exc.retryable
            ) from None


class ErrorTranslation(Interceptor):
    """Turns ``shared.errors`` raised by any activity into ApplicationErrors with the same code."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _TranslateErrors(next)
