"""The VM create form: what the browser posts, turned into the API's request, and the API's
reasons put back beside the fields they are about."""

from __future__ import annotations

from typing import Any

VM_FIELDS = ("name", "image", "vcpus", "memory_mib", "disk_gib", "storage", "networks", "ha",
             "placement_group_id", "user_data")
_INT_FIELDS = ("vcpus", "memory_mib", "disk_gib")


def number(raw: str) -> int | str:
    """A whole number the browser sent as text; anything else stays text for the API to refuse
    with its own reason."""
    raw = raw.strip()
    return int(raw) if raw.isascii() and raw.removeprefix("-").isdecimal() else raw


def vm_request(form: dict[str, str], networks: list[str]) -> dict[str, Any]:
    """The POST /v1/vms body. Numbers the browser sent as text stay text when they are not
    numbers, so the API says what is wrong with them."""
    body: dict[str, Any] = {"name": form.get("name", "").strip(), "image": form.get("image", "")}
    for key in _INT_FIELDS:
        body[key] = number(form.get(key, ""))
    body["storage"] = form.get("storage") or "shared"
    body["ha"] = form.get("ha") == "on"
    if form.get("placement_group_id"):
        body["placement_group_id"] = form["placement_group_id"]
    if form.get("user_data", "").strip():
        body["user_data"] = form["user_data"]
    body["networks"] = [{"network_id": n} for n in networks]
    return body


def field_errors(problems: list[str], fields: tuple[str, ...] = VM_FIELDS) -> tuple[dict[str, str], list[str]]:
    """The API's problems ("memory_mib: at most 262144", "networks.0.network_id: ...") by the field
    they name; the rest are about the whole form."""
    by_field: dict[str, str] = {}
    general: list[str] = []
    for problem in problems:
        subject, sep, reason = problem.partition(":")
        name = subject.strip().split(".", 1)[0]
        if sep and name in fields:
            by_field[name] = f"{by_field[name]}; {reason.strip()}" if name in by_field else reason.strip()
        else:
            general.append(problem)
    return by_field, general
