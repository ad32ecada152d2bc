"""A small synchronous client of the REST API, for the CLI, the benchmark and tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

WAIT_S = 10.0  # how long one request for an operation's outcome may wait for it


class ApiError(RuntimeError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


def bearer_headers(token: str | None) -> dict[str, str]:
    """The header that authenticates a request (and a console websocket's handshake) with
    ``token``; none without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


class VmflowClient:
    """Every request carries ``Authorization: Bearer <token>`` when a token is given; without
    one, only the public routes (GET /healthz, /readyz) answer anything but 401."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url, self.token = base_url, token
        self._http = httpx.Client(base_url=base_url, timeout=timeout_s, headers=bearer_headers(token))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VmflowClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response, for a caller that needs its headers too (X-Total-Count). Raises
        ApiError for any 4xx or 5xx, with the API's error code and message."""
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise ApiError(response.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiError(response.status_code, "http_error", response.text) from None
        return response

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The decoded JSON body (None for an empty one). Raises ApiError like ``request``."""
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def create_vm(self, name: str, vcpus: int, memory_mib: int, disk_gib: int, image: str,
                  storage: str = "shared", **extra: Any) -> dict:
        """``extra``: the other fields of a create (networks, hostname, user_data, ...)."""
        return self.call("POST", "/v1/vms", json={
            "name": name, "vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib, "image": image,
            "storage": storage, **extra,
        })

    def wait_operation(self, op_id: str, timeout_s: float = 300.0,
                       on_progress: Callable[[dict], None] | None = None, interval_s: float = 0.2) -> dict:
        """Wait until the operation is done; returns its final view (succeeded or not). The API
        answers as soon as it is done (``wait_s``), so this asks about once per ``WAIT_S``, or
        once a second while ``on_progress`` follows the steps; ``interval_s`` paces the asking."""
        deadline = time.monotonic() + timeout_s
        read_s = self._http.timeout.read or WAIT_S + 5
        wait_s = 1.0 if on_progress else min(WAIT_S, read_s / 3)  # the answer's own work fits in the rest
        while True:
            left_s = max(0.0, deadline - time.monotonic())
            op = self.call("GET", f"/v1/operations/{op_id}", params={"wait_s": round(min(wait_s, left_s), 3)})
            if on_progress:
                on_progress(op)
            if op["done"]:
                return op
            if time.monotonic() > deadline:
                raise TimeoutError(f"operation {op_id} still {op['state']} at step {op['step']}")
            time.sleep(interval_s)
