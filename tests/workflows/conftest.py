"""One real Temporal dev server for all workflow tests (each test uses its own workflow ids),
with the operations' search attributes registered the way every starting process registers them.

The server is this session's own child process, stopped by its PID with a bounded wait: the
session's end never waits on a server that does not exit."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from deploy.processes import free_port
from deploy.stack import temporal_binary
from shared.temporal import ensure_search_attributes

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0


async def _connect(address: str, server: subprocess.Popen) -> Client:
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
    while True:
        try:
            return await Client.connect(address)
        except RuntimeError:
            if server.poll() is not None:
                raise RuntimeError(f"the Temporal dev server exited with {server.returncode}") from None
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
async def env():
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="vmflow-wf-temporal-") as folder:
        log = open(Path(folder) / "temporal.log", "wb")
        server = subprocess.Popen(
            [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1",
             "--port", str(port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
             "--log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            client = await _connect(f"127.0.0.1:{port}", server)
            await ensure_search_attributes(client, client.namespace)
            yield WorkflowEnvironment.from_client(client)
        finally:
            _stop(server)
            log.close()
