"""Compensation for multi-step workflows: register the undo before running the step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from temporalio import workflow

Undo = Callable[[], Awaitable[object]]


class Saga:
    def __init__(self) -> None:
        self._undo: list[tuple[str, Undo]] = []

    def on_failure(self, description: str, undo: Undo) -> None:
        self._undo.append((description, undo))

    async def compensate(self) -> None:
        """Run every registered undo in reverse order. The undos are idempotent activities, so a
        step that never ran is undone harmlessly; one failing undo does not stop the others."""
        for description, undo in reversed(self._undo):
            try:
                await undo()
            except Exception as exc:  # keep undoing; the failure is in the history
                workflow.logger.error("compensation %s failed: %s", description, exc)
        self._undo.clear()


async def all_settled(*steps_: Awaitable) -> list:
    """Every step's result, once all are done; the first failure is raised only then, so the
    undoing never races a step still running (a volume made after its delete ran)."""
    outcomes = await asyncio.gather(*steps_, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes
