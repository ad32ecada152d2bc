"""One real Temporal dev server for all workflow tests (each test uses its own workflow ids),
with the operations' search attributes registered the way every starting process registers them."""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.testing import WorkflowEnvironment

from deploy.stack import temporal_binary
from shared.temporal import ensure_search_attributes


@pytest.fixture(scope="session")
async def env():
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        dev_server_startup_timeout=timedelta(seconds=60),
    )
    await ensure_search_attributes(environment.client, environment.client.namespace)
    yield environment
    await environment.shutdown()
