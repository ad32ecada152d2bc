"""Pools and data volumes through the REST API, checked on disk with qemu-img rather than
through vmflow: volumes are made (empty, thin and full clones), grow, are deleted, and every
bad request is refused with a 4xx and changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid

import httpx
import pytest

from deploy.client import ApiError, VmflowClient, bearer_headers
from tests.integration.libvirt_probe import wait_until

GIB = 1024**3


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def qemu_info(path: str) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def succeeded(api: VmflowClient, accepted: dict, timeout_s: float = 120) -> dict:
    op = api.wait_operation(accepted["operation_id"], timeout_s=timeout_s)
    assert op["state"] == "succeeded", op
    return op


def expect_error(api: VmflowClient, method: str, path: str, status: int, reason: str, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        api.call(method, path, **kwargs)
    assert caught.value.status == status, caught.value
    assert reason in caught.value.message, caught.value
    return caught.value


class EventTap:
    """Collects the subjects of /v1/events (SSE) under one filter, in a thread, as the holder of
    ``token`` sees them."""

    def __init__(self, base_url: str, subject: str, *, token: str) -> None:
        self.subjects: list[str] = []
        self._ready = threading.Event()
        self.refused: str | None = None
        threading.Thread(target=self._run, args=(base_url, subject, token), daemon=True).start()
        assert self._ready.wait(10), "SSE stream did not open"
        assert self.refused is None, f"SSE stream refused: {self.refused}"

    def _run(self, base_url: str, subject: str, token: str) -> None:
        try:
            with httpx.stream("GET", f"{base_url}/v1/events", params={"subject": subject},
                              headers=bearer_headers(token), timeout=None) as response:
                if response.status_code != 200:
                    self.refused = f"{response.status_code} {response.read().decode(errors='replace')[:300]}"
                self._ready.set()
                if self.refused:
                    return
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.subjects.append(json.loads(line[6:])["subject"])
        except httpx.HTTPError:
            return  # the stack went down at the end of the session

    def wait_for(self, subject: str, timeout_s: float = 10) -> None:
        wait_until(lambda: subject in self.subjects, timeout_s, what=f"event {subject}")


class Volumes:
    """Makes volumes for a test and deletes what is left of them afterwards."""

    def __init__(self, api: VmflowClient) -> None:
        self.api = api
        self.names: list[str] = []

    def create(self, pool: str = "shared", size_gib: int = 1, **extra) -> dict:
        name = unique("vol")
        self.names.append(name)
        accepted = self.api.call("POST", "/v1/volumes", json={"name": name, "pool": pool, "size_gib": size_gib,
                                                              **extra})
        assert accepted["operation_id"] == f"volume-{name}-create"
        succeeded(self.api, accepted)
        return self.api.call("GET", f"/v1/volumes/{name}")

    def cleanup(self) -> None:
        for name in self.names:
            try:
                volume = self.api.call("GET", f"/v1/volumes/{name}")
            except ApiError:
                continue
            if volume["vm_id"]:
                self.api.wait_operation(self.api.call("POST", f"/v1/volumes/{name}/detach")["operation_id"])
            self.api.wait_operation(self.api.call("DELETE", f"/v1/volumes/{name}")["operation_id"])


@pytest.fixture
def volumes(api):
    made = Volumes(api)
    yield made
    made.cleanup()


@pytest.fixture
def volume_world(stack_cfg, api):
    """Everything a volume request could have changed: the API's view and the pools' files."""

    def snapshot():
        pools = api.call("GET", "/v1/pools")
        files = sorted(f for p in pools if os.path.isdir(d := os.path.join(p["path"], "volumes"))
                       for f in os.listdir(d))
        return sorted(v["name"] for v in api.call("GET", "/v1/volumes")), files

    return snapshot


def test_pools_are_the_shared_one_and_one_per_host(stack_cfg, api):
    pools = {p["name"]: p for p in api.call("GET", "/v1/pools")}
    assert set(pools) == {"shared", *(f"local-{h}" for h in stack_cfg.host_ids())}
    assert pools["shared"]["kind"] == "shared" and pools["shared"]["host_id"] is None
    assert pools["shared"]["path"] == str(stack_cfg.pool_dir)
    for host_id in stack_cfg.host_ids():
        local = pools[f"local-{host_id}"]
        assert local["kind"] == "local" and local["host_id"] == host_id
    for pool in pools.values():
        assert pool["capacity_bytes"] >= pool["available_bytes"] > 0
        assert pool["used_bytes"] >= 0
    assert pools["shared"]["image_count"] >= 1 and pools["shared"]["used_bytes"] > 0  # the lab image
    assert api.call("GET", "/v1/pools/shared")["name"] == "shared"
    expect_error(api, "GET", "/v1/pools/nope", 404, "no pool named 'nope'")


def test_empty_volume_grows_and_is_deleted(stack_cfg, admin_token, api, volumes):
    tap = EventTap(stack_cfg.api_url, "vmflow.evt.volume.>", token=admin_token)
    volume = volumes.create(size_gib=1)
    name, path = volume["name"], volume["path"]
    assert (volume["kind"], volume["pool"], volume["size_gib"], volume["vm_id"]) == ("data", "shared", 1.0, None)
    assert qemu_info(path)["virtual-size"] == GIB
    used_before = {p["name"]: p for p in api.call("GET", "/v1/pools")}["shared"]["volume_count"]
    assert used_before >= 1

    resize = api.call("POST", f"/v1/volumes/{name}/resize", json={"size_gib": 3})
    assert resize["operation_id"].startswith(f"volume-{name}-resize-")
    succeeded(api, resize)
    assert qemu_info(path)["virtual-size"] == 3 * GIB
    assert api.call("GET", f"/v1/volumes/{name}")["size_gib"] == 3.0
    # Shrinking is refused and changes nothing.
    expect_error(api, "POST", f"/v1/volumes/{name}/resize", 422, "volumes only grow", json={"size_gib": 2})
    assert qemu_info(path)["virtual-size"] == 3 * GIB

    op = succeeded(api, api.call("DELETE", f"/v1/volumes/{name}"))
    assert op["kind"] == "DeleteVolume"
    assert not os.path.exists(path)
    expect_error(api, "GET", f"/v1/volumes/{name}", 404, f"no volume named '{name}'")
    for event in ("created", "resized", "deleted"):
        tap.wait_for(f"vmflow.evt.volume.shared.{name}.{event}")


def test_thin_and_full_clones_of_an_image(stack_cfg, api, volumes):
    image_disk = str(stack_cfg.pool_dir / "images" / "lab-guest" / "disk.qcow2")
    thin = volumes.create(size_gib=2, image="lab-guest")
    assert (thin["image"], thin["clone"]) == ("lab-guest", "thin")
    info = qemu_info(thin["path"])
    assert info["backing-filename"] == image_disk and info["virtual-size"] == 2 * GIB
    local_pool = f"local-{stack_cfg.host_ids()[-1]}"
    full = volumes.create(pool=local_pool, size_gib=1, image="lab-guest", clone="full")
    assert (full["pool"], full["clone"]) == (local_pool, "full")
    assert full["path"].startswith(str(stack_cfg.root / "lab" / "hosts"))
    assert "backing-filename" not in qemu_info(full["path"])
    # The image is now in use by the thin clone only; a full copy does not depend on it.
    expect_error(api, "DELETE", "/v1/images/lab-guest", 409, thin["name"])


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        ({"pool": "nope"}, 422, "unknown pool 'nope'"),
        ({"name": "../../etc/passwd"}, 422, "name: volume name must be 1-63 letters"),
        ({"name": "a/b"}, 422, "volume name must be"),
        ({"name": "x" * 64}, 422, "volume name must be"),
        ({"name": ""}, 422, "volume name must be"),
        ({"name": "a.b"}, 422, "volume name must be"),
        ({"name": f"vm-{uuid.uuid4()}-root"}, 422, "reserved for VM root disks"),
        ({"size_gib": 0}, 422, "size_gib: Input should be greater than or equal to 1"),
        ({"size_gib": 10**7}, 422, "size_gib must be between 1 and"),
        ({"image": "no-such-image"}, 422, "unknown image 'no-such-image'"),
        ({"image": "lab-guest", "clone": "linked"}, 422, "clone: Input should be 'thin' or 'full'"),
        ({"host": "h1"}, 422, "host: Extra inputs are not permitted"),
    ],
)
def test_bad_volume_requests_are_refused_and_change_nothing(api, volume_world, body, status, reason):
    before = volume_world()
    error = expect_error(api, "POST", "/v1/volumes", status, reason,
                         json={"name": unique("bad"), "pool": "shared", "size_gib": 1, **body})
    assert error.code == "invalid_request"
    assert volume_world() == before


def test_duplicate_names_unknown_volumes_and_root_disks(api, volumes, volume_world):
    volume = volumes.create()
    before = volume_world()
    # Names are unique across pools.
    expect_error(api, "POST", "/v1/volumes", 409, f"a volume named '{volume['name']}' already exists",
                 json={"name": volume["name"], "pool": "local-h1", "size_gib": 1})
    for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/detach")]:
        expect_error(api, method, f"/v1/volumes/nope-{uuid.uuid4().hex[:6]}{path}", 404, "no volume named")
    expect_error(api, "POST", "/v1/volumes/nope/resize", 404, "no volume named", json={"size_gib": 2})
    expect_error(api, "POST", f"/v1/volumes/{volume['name']}/attach", 404, "no VM with id",
                 json={"vm_id": str(uuid.uuid4())})
    expect_error(api, "POST", f"/v1/volumes/{volume['name']}/detach", 409, "is not attached")
    expect_error(api, "GET", "/v1/volumes/..%2F..%2Fetc", 404, "Not Found")
    assert volume_world() == before
