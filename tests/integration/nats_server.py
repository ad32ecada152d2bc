"""A throwaway nats-server on a free port, for tests that need NATS but no vmflow stack."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from deploy.processes import free_port, port_open
from tests.integration.libvirt_probe import wait_until


@contextmanager
def nats_server() -> Iterator[str]:
    """Yields the server's URL; the server is stopped afterwards, whatever happened."""
    port = free_port()
    server = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: port_open(port), 10, 0.05, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)
