"""Many tenants on one fleet: tokens that expire and are revoked, quotas that hold under a
burst of concurrent creates, event streams and audit trails that show a tenant only its own.
Everything through the real API, checked from outside the tenant that acted."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
import uuid

import httpx
import pytest

from deploy import postgres
from deploy.client import ApiError, VmflowClient
from tests.integration.cleanup import delete_all
from tests.integration.libvirt_probe import LibvirtProbe


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _tenant(api: VmflowClient, quota: dict | None = None) -> str:
    name = _unique("t")
    api.call("POST", "/v1/tenants", json={"name": name, "quota": quota or {}})
    return name


def _token(api: VmflowClient, tenant: str, role: str, **extra) -> dict:
    return api.call("POST", "/v1/tokens", json={"tenant": tenant, "user": f"{role}-user", "role": role, **extra})


def _client(stack_cfg, token: dict | str, timeout_s: float = 30.0) -> VmflowClient:
    return VmflowClient(stack_cfg.api_url, token=token if isinstance(token, str) else token["token"],
                        timeout_s=timeout_s)


def _inventory_bytes(stack_cfg) -> bytes:
    """Everything the inventory holds as it stores it: the SQLite file, or PostgreSQL's dump."""
    if stack_cfg.database == "postgres":
        return postgres.dump(postgres.Server(stack_cfg.root, stack_cfg.postgres_port))
    return (stack_cfg.root / "vmflow.db").read_bytes()


def _usage(api: VmflowClient, tenant: str) -> dict:
    return api.call("GET", f"/v1/tenants/{tenant}/quota")["resources"]


# -- tokens ----------------------------------------------------------------------------------


def test_requests_without_a_valid_token_are_refused_with_the_reason(stack_cfg, api):
    before = api.call("GET", "/v1/vms")
    for headers, says in (({}, "needs an API token"),
                          ({"Authorization": "Basic Zm9vOmJhcg=="}, "Bearer"),
                          ({"Authorization": "Bearer not-a-token"}, "malformed token"),
                          ({"Authorization": f"Bearer vmf_{'0' * 16}_{'A' * 43}"}, "unknown token")):
        response = httpx.post(f"{stack_cfg.api_url}/v1/vms", headers=headers, json={
            "name": "nope", "vcpus": 1, "memory_mib": 64, "disk_gib": 1, "image": "lab-guest"})
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert error["code"] == "unauthenticated" and says in error["message"], (headers, error)
    assert api.call("GET", "/v1/vms") == before  # nothing was made
    assert httpx.get(f"{stack_cfg.api_url}/healthz").status_code == 200  # the probes stay open


def test_an_admin_token_is_stored_only_as_a_hash_and_readable_by_its_owner_only(stack_cfg, api):
    mode = stack_cfg.admin_token_file.stat().st_mode & 0o777
    assert mode == 0o600
    secret = stack_cfg.admin_token_file.read_text().strip()
    assert api.call("GET", "/v1/whoami")["role"] == "admin"
    database = _inventory_bytes(stack_cfg)
    assert secret.encode() not in database and secret.split("_", 2)[2].encode() not in database
    listed = api.call("GET", "/v1/tokens")
    assert all("token" not in t and "secret_hash" not in t for t in listed)


def test_token_expiry_and_revocation_take_effect_on_the_next_request(stack_cfg, api):
    tenant = _tenant(api)
    short = _token(api, tenant, "reader", expires_in_s=2)
    revoked = _token(api, tenant, "member")
    with _client(stack_cfg, short) as expiring, _client(stack_cfg, revoked) as member:
        assert expiring.call("GET", "/v1/vms") == []
        assert member.call("GET", "/v1/whoami") == {"token_id": revoked["id"], "user": "member-user",
                                                     "tenant": tenant, "role": "member"}
        api.call("DELETE", f"/v1/tokens/{revoked['id']}")
        with pytest.raises(ApiError) as refused:
            member.call("GET", "/v1/vms")
        assert refused.value.status == 401 and "revoked" in refused.value.message
        time.sleep(2.2)
        with pytest.raises(ApiError) as expired:
            expiring.call("GET", "/v1/vms")
        assert expired.value.status == 401 and "expired" in expired.value.message


def test_a_token_cannot_give_more_than_its_holder_has(stack_cfg, api):
    tenant, other = _tenant(api), _tenant(api)
    with _client(stack_cfg, _token(api, tenant, "member")) as member:
        with pytest.raises(ApiError) as stronger:
            member.call("POST", "/v1/tokens", json={"role": "admin"})
        assert stronger.value.status == 403
        with pytest.raises(ApiError) as elsewhere:
            member.call("POST", "/v1/tokens", json={"role": "reader", "tenant": other})
        assert elsewhere.value.status == 422 and other in elsewhere.value.message
        with pytest.raises(ApiError) as bad_role:
            member.call("POST", "/v1/tokens", json={"role": "superuser"})
        assert bad_role.value.status == 422 and "role" in bad_role.value.message
        reader = member.call("POST", "/v1/tokens", json={"role": "reader", "expires_in_s": 600})
        assert reader["tenant"] == tenant and reader["role"] == "reader" and reader["token"].startswith("vmf_")
        assert {t["id"] for t in member.call("GET", "/v1/tokens")} >= {reader["id"]}
        assert "token" not in member.call("GET", f"/v1/tokens/{reader['id']}")


# -- quotas ----------------------------------------------------------------------------------


BURST = 200  # creates in flight at once


class UsageWatch:
    """Reads a tenant's quota every few milliseconds while a burst runs: the highest use seen."""

    def __init__(self, api: VmflowClient, tenant: str, resource: str) -> None:
        self.peak = 0
        self.samples = 0
        self.watched_throughout = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api, tenant, resource), daemon=True)
        self._thread.start()

    def _run(self, api: VmflowClient, tenant: str, resource: str) -> None:
        while not self._stop.is_set():
            try:
                usage = _usage(api, tenant)[resource]
            except httpx.TransportError:  # a kept-alive connection the busy server closed: ask again
                continue
            self.peak = max(self.peak, usage["used"] + usage["reserved"])
            self.samples += 1

    def stop(self) -> None:
        self.watched_throughout = self._thread.is_alive()  # it never died of an error midway
        self._stop.set()
        self._thread.join(10)


@pytest.mark.parametrize(("quota", "memory_mib", "fits"), [({"vms": 10}, 96, 10), ({"memory_mib": 960}, 96, 10)],
                         ids=["vms", "memory"])
def test_a_burst_of_creates_never_overshoots_the_quota(stack_cfg, api, probe: LibvirtProbe, quota, memory_mib,
                                                       fits):
    """200 creates at once against a quota with room for ``fits``: exactly that many are
    accepted, the rest are refused naming the resource, use is never above the limit at any
    moment, and it is back to zero once the VMs are deleted."""
    tenant = _tenant(api, quota)
    resource = next(iter(quota))
    token = _token(api, tenant, "member")["token"]
    watch = UsageWatch(api, tenant, resource)
    start = threading.Barrier(BURST)  # every request leaves at once, none waits for a free thread

    def create(i: int) -> tuple[int, dict]:
        with _client(stack_cfg, token, timeout_s=120) as client:
            start.wait(60)
            try:
                return 202, client.call("POST", "/v1/vms", json={
                    "name": f"q-{i}", "vcpus": 1, "memory_mib": memory_mib, "disk_gib": 1, "image": "lab-guest"})
            except ApiError as exc:
                return exc.status, {"code": exc.code, "message": exc.message}

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=BURST) as pool:
            answers = list(pool.map(create, range(BURST)))
        accepted = [body for status, body in answers if status == 202]
        refused = [body for status, body in answers if status != 202]
        assert len(accepted) == fits, {json.dumps(r) for r in refused[:3]}
        assert all(r["code"] == "quota_exceeded" and f"{resource}: asked" in r["message"] for r in refused), refused[:3]
        assert f"0 left of {quota[resource]}" in refused[-1]["message"]
        with _client(stack_cfg, token) as member:
            ops = [member.wait_operation(a["operation_id"], timeout_s=600, interval_s=1.0) for a in accepted]
            assert [op["state"] for op in ops] == ["succeeded"] * fits, [op["error"] for op in ops if op["error"]]
            usage = _usage(api, tenant)[resource]
            assert usage["used"] == quota[resource] and usage["reserved"] == 0 and usage["available"] == 0
            domains = {h: set(probe.domain_uuids(h)) for h in probe.uris}
            assert {a["vm"]["id"] for a in accepted} <= set().union(*domains.values())
            delete_all(member, [a["vm"]["id"] for a in accepted])
    finally:
        watch.stop()
    assert watch.samples > 10 and watch.watched_throughout, "the quota was not watched all along"
    assert watch.peak <= quota[resource], f"use reached {watch.peak} of {quota[resource]}"
    after = _usage(api, tenant)
    assert all(r["used"] == 0 and r["reserved"] == 0 for r in after.values()), after


def test_a_quota_below_current_use_is_accepted_with_a_warning_and_blocks_new_use(stack_cfg, api):
    tenant = _tenant(api)
    with _client(stack_cfg, _token(api, tenant, "member")) as member:
        accepted = member.call("POST", "/v1/networks", json={"name": "n1", "cidr": "10.9.0.0/24"})
        member.wait_operation(accepted["operation_id"], timeout_s=60)
        for bad in ({"networks": -1}, {"vms": "many"}, {"gpus": 1}):
            with pytest.raises(ApiError) as refused:
                api.call("PUT", f"/v1/tenants/{tenant}/quota", json=bad)
            assert refused.value.status == 422, bad
        assert _usage(api, tenant)["networks"]["limit"] is None  # nothing changed
        answer = api.call("PUT", f"/v1/tenants/{tenant}/quota", json={"networks": 0})
        assert answer["resources"]["networks"] == {"limit": 0, "used": 1, "reserved": 0, "available": 0}
        assert any("networks: the limit 0 is below the 1" in w for w in answer["warnings"])
        with pytest.raises(ApiError) as over:
            member.call("POST", "/v1/networks", json={"name": "n2", "cidr": "10.9.1.0/24"})
        assert over.value.status == 409 and over.value.code == "quota_exceeded"
        assert [n["name"] for n in member.call("GET", "/v1/networks")] == ["n1"]
        [network] = member.call("GET", "/v1/networks")
        member.wait_operation(member.call("DELETE", f"/v1/networks/{network['id']}")["operation_id"], timeout_s=60)
    assert _usage(api, tenant)["networks"]["used"] == 0


# -- what a tenant sees ------------------------------------------------------------------------


class Stream:
    """One client's SSE stream, collected in a thread."""

    def __init__(self, base_url: str, token: str) -> None:
        self.events: list[dict] = []
        self._stop = threading.Event()
        ready = threading.Event()

        def run() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.stream("GET", f"{base_url}/v1/events", headers=headers, timeout=None) as response:
                assert response.status_code == 200
                ready.set()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                    if self._stop.is_set():
                        return

        threading.Thread(target=run, daemon=True).start()
        assert ready.wait(10), "the event stream did not open"

    def mentions(self, text: str) -> list[str]:
        return [e["subject"] for e in self.events if text in json.dumps(e)]

    def close(self) -> None:
        self._stop.set()


def test_a_tenant_sees_only_its_own_objects_operations_events_and_audit(stack_cfg, api, cleanup):
    a, b = _tenant(api), _tenant(api)
    token_a, token_b = _token(api, a, "member"), _token(api, b, "member")
    admin_token = stack_cfg.admin_token_file.read_text().strip()
    streams = {who: Stream(stack_cfg.api_url, t) for who, t in
               (("a", token_a["token"]), ("b", token_b["token"]), ("admin", admin_token))}
    with _client(stack_cfg, token_a) as ca, _client(stack_cfg, token_b) as cb:
        net = ca.call("POST", "/v1/networks", json={"name": "blue", "cidr": "10.7.0.0/24"})
        vm = ca.call("POST", "/v1/vms", json={"name": "a-vm", "vcpus": 1, "memory_mib": 96, "disk_gib": 1,
                                               "image": "lab-guest"})
        cleanup.append(vm["vm"]["id"])
        assert ca.wait_operation(vm["operation_id"], timeout_s=300)["state"] == "succeeded"
        vm_id, op_id = vm["vm"]["id"], vm["operation_id"]
        net_id = ca.call("GET", "/v1/networks")[0]["id"]
        time.sleep(1.0)  # the last events reach every stream
        for stream in streams.values():
            stream.close()
        # B: nothing of A's anywhere
        assert cb.call("GET", "/v1/vms") == [] and cb.call("GET", "/v1/networks") == []
        for path in (f"/v1/vms/{vm_id}", f"/v1/operations/{op_id}", f"/v1/networks/{net_id}",
                     f"/v1/vms/{vm_id}/nics", f"/v1/tenants/{a}/quota"):
            with pytest.raises(ApiError) as hidden:
                cb.call("GET", path)
            assert hidden.value.status == 404, path
        with pytest.raises(ApiError) as hidden:
            cb.call("POST", f"/v1/vms/{vm_id}/stop", json={"force": True})
        assert hidden.value.status == 404
        assert ca.call("GET", f"/v1/vms/{vm_id}")["state"] == "running"
        assert streams["b"].mentions(vm_id) == [] and streams["b"].mentions(a) == []
        assert all(f".{b}." in s or s.startswith(f"vmflow.evt.audit.{b}") for s in
                   (e["subject"] for e in streams["b"].events))
        # A: its own, seen live; the admin sees A's too
        assert streams["a"].mentions(vm_id) and streams["a"].mentions(net["operation_id"])
        assert f"vmflow.evt.audit.{a}.accepted" in {e["subject"] for e in streams["a"].events}
        assert streams["admin"].mentions(vm_id)
        assert ca.call("GET", f"/v1/operations/{op_id}")["state"] == "succeeded"
        mine = ca.call("GET", "/v1/audit")
        assert {r["action"] for r in mine} >= {"POST /v1/vms", "POST /v1/networks"}
        assert all(r["tenant"] == a and r["token_id"] == token_a["id"] and r["role"] == "member" for r in mine)
        created = next(r for r in mine if r["action"] == "POST /v1/vms")
        # Accepted while it ran (the event said so), its record now tells how the operation ended.
        assert created["outcome"] == "done" and created["operation_id"] == op_id and created["status"] == 202
        refused = [r for r in cb.call("GET", "/v1/audit") if r["action"] == "POST /v1/vms/{vm_id}/stop"]
        assert refused and refused[0]["outcome"] == "refused" and refused[0]["code"] == "not_found"
        assert all(r["tenant"] == b for r in cb.call("GET", "/v1/audit"))
    everything = httpx.get(f"{stack_cfg.api_url}/v1/audit", params={"limit": 2},
                           headers={"Authorization": f"Bearer {admin_token}"})
    assert len(everything.json()) == 2 and int(everything.headers["x-total-count"]) >= 4
    # What the admin made: the fleet's trail, naming what was made and the admin token's own tenant.
    made = {r["location"]: r for r in api.call("GET", "/v1/audit", params={"limit": 1000})
            if r["action"] == "POST /v1/tokens"}
    for token in (token_a, token_b):
        record = made[f"/v1/tokens/{token['id']}"]
        assert (record["tenant"], record["role"], record["status"]) == (None, "admin", 201)
        assert record["token_tenant"] == api.call("GET", "/v1/whoami")["tenant"]
    ca_delete = api.call("DELETE", f"/v1/vms/{vm_id}")
    api.wait_operation(ca_delete["operation_id"], timeout_s=120)
    api.wait_operation(api.call("DELETE", f"/v1/networks/{net_id}")["operation_id"], timeout_s=60)


def test_errors_are_json_with_a_code_everywhere(stack_cfg, api):
    token = stack_cfg.admin_token_file.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, status, code in (("GET", "/v1/nothing-here", 404, "not_found"),
                                       ("PATCH", "/v1/vms", 405, "method_not_allowed"),
                                       ("GET", "/v1/tenants/no-such-tenant", 404, "not_found"),
                                       ("POST", "/v1/tenants", 422, "invalid_request")):
        response = httpx.request(method, f"{stack_cfg.api_url}{path}", headers=headers, json={"name": "Bad Name"})
        assert response.status_code == status, (method, path, response.text)
        assert response.json()["error"]["code"] == code and response.json()["error"]["message"]
        assert len(response.headers["x-request-id"]) == 32


def _done(client: VmflowClient, accepted: dict, state: str = "succeeded") -> dict:
    op = client.wait_operation(accepted["operation_id"], timeout_s=300, interval_s=0.3)
    assert op["state"] == state, op
    return op


def test_volumes_growth_snapshots_and_templates_count_and_are_given_back(stack_cfg, api, cleanup):
    """Disk is root disks + data volumes + templates; a refusal changes nothing; everything is
    back to zero once deleted. Another tenant does not see the template."""
    tenant = _tenant(api, {"disk_gib": 4, "volumes": 1, "snapshots": 1})
    with _client(stack_cfg, _token(api, tenant, "member")) as member, \
            _client(stack_cfg, _token(api, _tenant(api), "member")) as stranger:
        vm = member.create_vm("keeper", vcpus=1, memory_mib=96, disk_gib=1, image="lab-guest")
        cleanup.append(vm_id := vm["vm"]["id"])
        _done(member, vm)
        _done(member, member.call("POST", f"/v1/vms/{vm_id}/stop", json={"force": True}))
        volume = _unique("qv")
        _done(member, member.call("POST", "/v1/volumes", json={"name": volume, "pool": "shared", "size_gib": 1}))
        usage = _usage(api, tenant)
        assert (usage["disk_gib"]["used"], usage["volumes"]["used"]) == (2, 1)
        with pytest.raises(ApiError) as second:
            member.call("POST", "/v1/volumes", json={"name": _unique("qv"), "pool": "shared", "size_gib": 1})
        assert second.value.code == "quota_exceeded" and "volumes: asked 1, 0 left of 1" in second.value.message
        with pytest.raises(ApiError) as too_big:
            member.call("POST", f"/v1/volumes/{volume}/resize", json={"size_gib": 4})
        assert too_big.value.code == "quota_exceeded" and "disk_gib: asked 3, 2 left of 4" in too_big.value.message
        _done(member, member.call("POST", f"/v1/volumes/{volume}/resize", json={"size_gib": 2}))
        assert _usage(api, tenant)["disk_gib"] == {"limit": 4, "used": 3, "reserved": 0, "available": 1}
        _done(member, member.call("POST", f"/v1/vms/{vm_id}/snapshots", json={"name": "s1"}))
        with pytest.raises(ApiError) as snapshot:
            member.call("POST", f"/v1/vms/{vm_id}/snapshots", json={"name": "s2"})
        assert snapshot.value.code == "quota_exceeded" and "snapshots" in snapshot.value.message
        template = _unique("qt")
        _done(member, member.call("POST", f"/v1/vms/{vm_id}/template", json={"name": template}))
        assert _usage(api, tenant)["disk_gib"]["used"] == 4
        assert template in {i["name"] for i in member.call("GET", "/v1/images")}
        assert template not in {i["name"] for i in stranger.call("GET", "/v1/images")}
        assert volume not in {v["name"] for v in stranger.call("GET", "/v1/volumes")}
        with pytest.raises(ApiError) as hidden:
            stranger.call("DELETE", f"/v1/images/{template}")
        assert hidden.value.status == 404
        # Nor can it boot or clone the template: that would copy the other tenant's disk.
        with pytest.raises(ApiError) as boot:
            stranger.create_vm("thief", vcpus=1, memory_mib=96, disk_gib=1, image=template)
        assert boot.value.status == 422 and f"unknown image '{template}'" in boot.value.message
        with pytest.raises(ApiError) as clone:
            stranger.call("POST", "/v1/volumes", json={"name": _unique("qc"), "pool": "shared", "size_gib": 1,
                                                       "image": template})
        assert clone.value.status == 422 and "no image named" in clone.value.message
        assert stranger.call("GET", "/v1/vms") == [] and stranger.call("GET", "/v1/volumes") == []
        with pytest.raises(ApiError) as shared:
            member.call("DELETE", "/v1/images/lab-guest")
        assert shared.value.status == 403
        _done(member, member.call("DELETE", f"/v1/images/{template}"))
        _done(member, member.call("DELETE", f"/v1/vms/{vm_id}/snapshots/s1"))
        _done(member, member.call("DELETE", f"/v1/volumes/{volume}"))
        _done(member, member.call("DELETE", f"/v1/vms/{vm_id}"))
    after = _usage(api, tenant)
    assert all(r["used"] == 0 and r["reserved"] == 0 for r in after.values()), after


def test_a_provision_that_fails_gives_its_quota_back(stack_cfg, api, broken_image):
    tenant = _tenant(api, {"vms": 1})
    with _client(stack_cfg, _token(api, tenant, "member")) as member:
        failing = member.create_vm("doomed", vcpus=1, memory_mib=96, disk_gib=1, image=broken_image)
        _done(member, failing, state="failed")
        assert member.call("GET", "/v1/vms") == []
        assert _usage(api, tenant)["vms"] == {"limit": 1, "used": 0, "reserved": 0, "available": 1}
