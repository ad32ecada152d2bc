"""What authentication and policy cost per request, on the running stack.

In one run, interleaved (each round makes every request once, the order rotating by one each
round, so machine noise hits all of them alike), after a warm-up:

- GET /healthz without a token: public, so no token lookup and no policy: the floor;
- GET /v1/whoami with the token: the token's row read, its secret checked (from the cache once
  verified), the policy table; a handler that does next to nothing;
- GET /v1/vms with the token: the same plus a listing of the VMs the token sees.

Apart from those, once: a fresh token's first request, when the API has not verified its
secret yet (Argon2, slow on purpose), next to its second (verified from the cache). The fresh
token is a reader's, lives 10 minutes and is revoked at the end.

Every request goes over a connection already open (keep-alive): connecting is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.bench import PERCENTILE_METHOD, BenchError, _running_stack, percentile
from deploy.client import VmflowClient, bearer_headers

WARMUP_ROUNDS = 50
FRESH_TOKEN_LIFETIME_S = 600


@dataclass(frozen=True)
class Quantiles:
    n: int
    p50_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class AuthFigures:
    public_ms: tuple[float, ...]  # GET /healthz, no token
    whoami_ms: tuple[float, ...]  # GET /v1/whoami, token
    vms_ms: tuple[float, ...]  # GET /v1/vms, token
    fresh_first_ms: float  # a fresh token's first GET /v1/vms: its secret verified with Argon2
    fresh_second_ms: float  # its second: verified from the API's cache
    role: str  # the measuring token's
    vm_count: int  # what GET /v1/vms lists for it


# --- figures: pure ------------------------------------------------------------------------------


def quantiles(samples_ms: Sequence[float]) -> Quantiles:
    """Raises ValueError for no samples."""
    return Quantiles(len(samples_ms), percentile(samples_ms, 50), percentile(samples_ms, 99),
                     min(samples_ms), max(samples_ms))


def time_interleaved(calls: Sequence[Callable[[], object]], rounds: int,
                     clock: Callable[[], float] = time.perf_counter) -> list[list[float]]:
    """Make every call once per round, the order rotated by one each round (no call always
    follows the same one), and return each call's durations in ms, in round order."""
    samples: list[list[float]] = [[] for _ in calls]
    for round_index in range(rounds):
        for k in range(len(calls)):
            i = (round_index + k) % len(calls)
            started = clock()
            calls[i]()
            samples[i].append((clock() - started) * 1000.0)
    return samples


def format_auth_table(figures: AuthFigures) -> list[str]:
    """The lines ``run_auth_bench`` prints: milliseconds, 3 decimals."""
    rows = (("GET /healthz, no token", figures.public_ms), ("GET /v1/whoami, token", figures.whoami_ms),
            ("GET /v1/vms, token", figures.vms_ms))
    stats = {label: quantiles(samples) for label, samples in rows}
    floor, whoami, vms = stats.values()
    lines = [f"{'':24}{'n':>6}{'p50_ms':>9}{'p99_ms':>9}{'min_ms':>9}{'max_ms':>9}"]
    for label, q in stats.items():
        lines.append(f"{label:24}{q.n:>6}{q.p50_ms:>9.3f}{q.p99_ms:>9.3f}{q.min_ms:>9.3f}{q.max_ms:>9.3f}")
    return lines + [  # under 80 columns: rich wraps longer lines when not on a terminal
        f"token + policy (whoami - healthz): p50 {whoami.p50_ms - floor.p50_ms:+.3f} ms, "
        f"p99 {whoami.p99_ms - floor.p99_ms:+.3f} ms",
        f"GET /v1/vms - healthz:             p50 {vms.p50_ms - floor.p50_ms:+.3f} ms, "
        f"p99 {vms.p99_ms - floor.p99_ms:+.3f} ms",
        f"fresh token, 1st GET /v1/vms:      {figures.fresh_first_ms:.3f} ms (Argon2 verification)",
        f"fresh token, 2nd GET /v1/vms:      {figures.fresh_second_ms:.3f} ms (verified from the cache)",
        f"measuring token: {figures.role}; GET /v1/vms lists {figures.vm_count} VM(s)",
        f"interleaved in rotating order after {WARMUP_ROUNDS} warm-up rounds; differences",
        f"  are of the percentiles; percentiles: {PERCENTILE_METHOD}",
    ]


# --- the run ------------------------------------------------------------------------------------


def _fresh_token_requests(client: VmflowClient) -> tuple[float, float]:
    """(first, second) GET /v1/vms in ms with a reader token made for it, over the client's
    open connection. The token is revoked afterwards, whatever happened."""
    issued = client.call("POST", "/v1/tokens", json={
        "role": "reader", "expires_in_s": FRESH_TOKEN_LIFETIME_S,
        "description": "vmflow bench auth: a fresh token's first request"})
    try:
        headers = bearer_headers(issued["token"])
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            client.call("GET", "/v1/vms", headers=headers)
            timings.append((time.perf_counter() - started) * 1000.0)
        return timings[0], timings[1]
    finally:
        client.call("DELETE", f"/v1/tokens/{issued['id']}")


def run_auth_bench(run_dir: Path, requests: int, say: Callable[[str], None], token: str | None) -> AuthFigures:
    """Measure ``requests`` of each kind, interleaved after a warm-up, and a fresh token's first
    request; print the figures through ``say`` and return them. BenchError when no stack runs
    from ``run_dir`` or there is no token; ApiError when the API refuses the token."""
    if not token:
        raise BenchError("the auth benchmark needs an API token: `vmflow login`, VMFLOW_TOKEN, or run it as the "
                         "user that may read the stack's admin token")
    cfg = _running_stack(run_dir)
    with VmflowClient(cfg.api_url, token) as client, VmflowClient(cfg.api_url) as anonymous:
        me = client.call("GET", "/v1/whoami")
        vm_count = len(client.call("GET", "/v1/vms"))
        say(f"{requests} x GET /healthz (no token), GET /v1/whoami and GET /v1/vms (token of {me['user']}, "
            f"{me['role']}), interleaved")
        calls = (lambda: anonymous.call("GET", "/healthz"), lambda: client.call("GET", "/v1/whoami"),
                 lambda: client.call("GET", "/v1/vms"))
        time_interleaved(calls, WARMUP_ROUNDS)
        public_ms, whoami_ms, vms_ms = time_interleaved(calls, requests)
        fresh_first_ms, fresh_second_ms = _fresh_token_requests(client)
    figures = AuthFigures(tuple(public_ms), tuple(whoami_ms), tuple(vms_ms), fresh_first_ms, fresh_second_ms,
                          me["role"], vm_count)
    for line in format_auth_table(figures):
        say(line)
    return figures
