"""What the portal costs per page, on the running stack, next to the API call it is built on.

In one run, interleaved in rotating order after a warm-up (machine noise hits all alike), with
one signed-in portal session and the same token's API client:

- GET /v1/vms with the token: the raw API call, the baseline;
- GET /vms: the whole VM list page (the session checked with /v1/whoami, /v1/vms called in
  process, the page rendered);
- GET /vms?live=1: the live region a page re-fetches when an event arrives;
- GET /operations: the operations page (a Temporal visibility query behind it);
- GET /metrics: the API's scrape (admins only; skipped for other tokens).

Every request goes over a connection already open (keep-alive): connecting is not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from deploy.bench import PERCENTILE_METHOD, BenchError, _running_stack
from deploy.bench_auth import WARMUP_ROUNDS, quantiles, time_interleaved
from deploy.client import VmflowClient
from shared.auth import SESSION_COOKIE


def _signed_in(api_url: str, token: str) -> httpx.Client:
    """A browser-like client holding a portal session made from ``token``."""
    browser = httpx.Client(base_url=api_url, timeout=30.0)
    reply = browser.post("/login", data={"token": token}, headers={"Origin": api_url})
    if reply.status_code != 303 or SESSION_COOKIE not in browser.cookies:
        browser.close()
        raise BenchError(f"the portal refused the sign-in: {reply.status_code}")
    return browser


def _page(browser: httpx.Client, path: str) -> Callable[[], object]:
    def get() -> object:
        reply = browser.get(path)
        if reply.status_code != 200:
            raise BenchError(f"GET {path}: {reply.status_code}")
        return reply
    return get


def format_portal_table(samples_ms: dict[str, list[float]]) -> list[str]:
    """The lines ``run_portal_bench`` prints, each page's p50 also as a multiple of the raw call."""
    stats = {label: quantiles(samples) for label, samples in samples_ms.items()}
    baseline = next(iter(stats.values()))
    lines = [f"{'':28}{'n':>6}{'p50_ms':>9}{'p99_ms':>9}{'x raw p50':>11}"]
    for label, q in stats.items():
        lines.append(f"{label:28}{q.n:>6}{q.p50_ms:>9.3f}{q.p99_ms:>9.3f}{q.p50_ms / baseline.p50_ms:>11.2f}")
    return lines + [f"interleaved in rotating order after {WARMUP_ROUNDS} warm-up rounds; percentiles: "
                    f"{PERCENTILE_METHOD}"]


def run_portal_bench(run_dir: Path, requests: int, say: Callable[[str], None], token: str | None
                     ) -> dict[str, list[float]]:
    """Measure ``requests`` of each page next to the raw API call; print and return the samples.
    The session's token is revoked at the end (signing out)."""
    if not token:
        raise BenchError("the portal benchmark needs an API token: `vmflow login` or VMFLOW_TOKEN")
    cfg = _running_stack(run_dir)
    with VmflowClient(cfg.api_url, token) as client:
        me = client.call("GET", "/v1/whoami")
        calls = {"GET /v1/vms (raw API)": lambda: client.call("GET", "/v1/vms")}
        browser = _signed_in(cfg.api_url, token)
        try:
            calls["GET /vms (page)"] = _page(browser, "/vms")
            calls["GET /vms?live=1 (region)"] = _page(browser, "/vms?live=1")
            calls["GET /operations (page)"] = _page(browser, "/operations")
            if me["role"] == "admin":
                calls["GET /metrics (API scrape)"] = lambda: client.request("GET", "/metrics")
            say(f"{requests} x each of {', '.join(calls)} as {me['user']} ({me['role']}), interleaved; "
                f"{len(client.call('GET', '/v1/vms'))} VM(s) listed")
            time_interleaved(list(calls.values()), WARMUP_ROUNDS)
            samples = dict(zip(calls, time_interleaved(list(calls.values()), requests)))
        finally:
            browser.post("/logout", headers={"Origin": cfg.api_url})
            browser.close()
    for line in format_portal_table(samples):
        say(line)
    return samples
