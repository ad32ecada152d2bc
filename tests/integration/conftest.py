"""One isolated vmflow stack for the integration tests: its own ports, run folder and lab
namespaces, so it runs beside a developer's ``vmflow up``; torn down even when tests fail."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from deploy import lab, stack
from deploy.client import ApiError, VmflowClient
from tests.integration.lab_watch import LabWatch
from tests.integration.libvirt_probe import LibvirtProbe

LAB_LABELS = {"h3": ["gpu"]}  # exactly one host has it: label placement has one right answer
# The test stack's inventory: postgres (a PostgreSQL of its own: the production engine, what
# `make test` and CI run) or sqlite (the embedded default of `vmflow up`: `make test-sqlite`).
TEST_DATABASE = os.environ.get("VMFLOW_TEST_DATABASE", "postgres")


_failed: list[str] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"report_{report.when}", report)  # for fixtures that look at their test's outcome
    if report.failed:
        _failed.append(item.nodeid)
    return report


def _tell_what_went_wrong(run_dir: Path, say, limit: int = 40) -> None:
    """After a failed test: the services' warnings and errors, for whoever reads the CI log."""
    lines = []
    for log_file in sorted((run_dir / "logs").glob("*.log")):
        if log_file.stem in ("nats", "temporal"):
            continue
        for line in log_file.read_text(errors="replace").splitlines():
            if '"level": "warning"' in line or '"level": "error"' in line:
                lines.append(f"{log_file.stem}: {line[:400]}")
    say(f"== services' warnings and errors ({len(lines)}, the last {limit}) ==")
    for line in lines[-limit:]:
        say(line)


@pytest.fixture(scope="session")
def stack_cfg(pytestconfig):
    if TEST_DATABASE not in stack.DATABASES:
        raise pytest.UsageError(f"VMFLOW_TEST_DATABASE: one of {', '.join(stack.DATABASES)}, not {TEST_DATABASE!r}")
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-test-"))
    cfg = stack.StackConfig.isolated(run_dir, f"vmt{os.getpid() % 100000}", host_count=3,
                                     host_labels=LAB_LABELS, database=TEST_DATABASE)
    watch = None
    try:
        stack.up(cfg, say=lambda _msg: None)
        watch = LabWatch(lab.load_lab(cfg.lab_name, cfg.root / "lab"), run_dir,
                         VmflowClient(cfg.api_url, stack.admin_token(cfg), timeout_s=5.0)).start()
        yield cfg
    finally:
        if watch is not None:
            watch.stop()
            watch.close()
        # Straight to the terminal: a session's teardown output is otherwise dropped.
        if _failed:
            reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
            with pytestconfig.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
                _tell_what_went_wrong(run_dir, reporter.write_line)
                for report in (watch.reports if watch else ()):
                    reporter.write_line(f"== the lab watch saw a host stuck ==\n{report}")
        stack.down(run_dir, say=lambda _msg: None)
        if not os.environ.get("VMFLOW_KEEP_TEST_RUN"):  # keep logs to look into a failure
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def admin_token(stack_cfg) -> str:
    """The admin token the API wrote to the stack's run dir at start (user admin, tenant default)."""
    token = stack.admin_token(stack_cfg)
    assert token, f"the API wrote no admin token to {stack_cfg.admin_token_file}"
    return token


@pytest.fixture(scope="session")
def api(stack_cfg, admin_token) -> VmflowClient:
    """The API as the admin: it sees (and acts on) every tenant's objects."""
    client = VmflowClient(stack_cfg.api_url, admin_token)
    yield client
    client.close()


@pytest.fixture(scope="session")
def tenant_client(stack_cfg, api):
    """``tenant_client(tenant, role="member", quota=None)``: a client acting as a user of
    ``tenant`` with ``role`` (reader, member or admin), through a token the admin makes for it.
    The tenant is made once per session, with ``quota`` (limits by resource) when given; a later
    call with a quota changes those limits. At the end of the session the tokens are revoked and
    every tenant that holds nothing any more is deleted."""
    tenants: list[str] = []
    issued: list[tuple[VmflowClient, str]] = []

    def make(tenant: str, role: str = "member", quota: dict | None = None) -> VmflowClient:
        if tenant not in tenants:
            try:
                api.call("POST", "/v1/tenants", json={"name": tenant, "quota": quota or {}})
                quota = None  # set with it
            except ApiError as exc:
                if exc.status != 409:  # 409: it exists already (a name an earlier session left)
                    raise
            tenants.append(tenant)
        if quota is not None:
            api.call("PUT", f"/v1/tenants/{tenant}/quota", json=quota)
        token = api.call("POST", "/v1/tokens", json={"tenant": tenant, "user": f"test-{role}", "role": role,
                                                     "description": "integration tests"})
        client = VmflowClient(stack_cfg.api_url, token["token"])
        issued.append((client, token["id"]))
        return client

    yield make
    for client, token_id in issued:
        client.close()
        try:
            api.call("DELETE", f"/v1/tokens/{token_id}")
        except ApiError:
            pass  # gone with its tenant or user already
    for tenant in tenants:
        try:
            api.call("DELETE", f"/v1/tenants/{tenant}")
        except ApiError:
            pass  # a test left something in it (409): the stack goes at the end anyway


@pytest.fixture(scope="session")
def probe(stack_cfg) -> LibvirtProbe:
    """Looks at the hosts through virsh, independently of vmflow."""
    the_lab = lab.load_lab(stack_cfg.lab_name, stack_cfg.root / "lab")
    return LibvirtProbe({h.host_id: h.unix_uri for h in the_lab.hosts})


@pytest.fixture
def cleanup(api):
    """VM ids a test made: deleted afterwards, whatever the test left of them."""
    vm_ids: list[str] = []
    yield vm_ids
    for vm_id in vm_ids:
        try:
            api.wait_operation(api.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"], timeout_s=120)
        except ApiError:
            pass


@pytest.fixture
def broken_image(stack_cfg):
    """An image whose kernel file is missing: libvirt accepts the definition, the host refuses to
    start it. Exactly the kind of failure that strikes midway, after volume and domain exist."""
    good = stack_cfg.pool_dir / "images" / "lab-guest"
    broken = stack_cfg.pool_dir / "images" / "broken-kernel"
    broken.mkdir()
    os.link(good / "disk.qcow2", broken / "disk.qcow2")
    os.link(good / "initrd.gz", broken / "initrd.gz")
    meta = json.loads((good / "image.json").read_text())
    (broken / "image.json").write_text(json.dumps({**meta, "name": "broken-kernel", "kernel": "gone"}))
    yield "broken-kernel"
    shutil.rmtree(broken)
