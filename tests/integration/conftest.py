"""One isolated vmflow stack for the integration tests: its own ports, run folder and lab
namespaces, so it runs beside a developer's ``vmflow up``; torn down even when tests fail."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from deploy import lab, stack
from deploy.client import VmflowClient
from tests.integration.libvirt_probe import LibvirtProbe

LAB_LABELS = {"h3": ["gpu"]}  # exactly one host has it: label placement has one right answer


@pytest.fixture(scope="session")
def stack_cfg():
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-test-"))
    cfg = stack.StackConfig.isolated(run_dir, f"vmt{os.getpid() % 100000}", host_count=3,
                                     host_labels=LAB_LABELS)
    try:
        stack.up(cfg, say=lambda _msg: None)
        yield cfg
    finally:
        stack.down(run_dir, say=lambda _msg: None)
        if not os.environ.get("VMFLOW_KEEP_TEST_RUN"):  # keep logs to look into a failure
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def api(stack_cfg) -> VmflowClient:
    client = VmflowClient(stack_cfg.api_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def probe(stack_cfg) -> LibvirtProbe:
    """Looks at the hosts through virsh, independently of vmflow."""
    the_lab = lab.load_lab(stack_cfg.lab_name, stack_cfg.root / "lab")
    return LibvirtProbe({h.host_id: h.unix_uri for h in the_lab.hosts})
