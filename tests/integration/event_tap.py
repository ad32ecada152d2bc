"""Following the API's server-sent events from a test."""

from __future__ import annotations

import json
import threading
import time

import httpx

from deploy.client import bearer_headers


class EventTap:
    """Collects the SSE stream of /v1/events in a thread, as the holder of ``token`` sees it
    (an admin's: every tenant's events)."""

    def __init__(self, base_url: str, *, token: str) -> None:
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.refused: str | None = None
        self._thread = threading.Thread(target=self._run, args=(base_url, token), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "SSE stream did not open"
        assert self.refused is None, f"SSE stream refused: {self.refused}"

    def _run(self, base_url: str, token: str) -> None:
        with httpx.stream("GET", f"{base_url}/v1/events", headers=bearer_headers(token), timeout=None) as response:
            if response.status_code != 200:
                self.refused = f"{response.status_code} {response.read().decode(errors='replace')[:300]}"
            self._ready.set()
            if self.refused:
                return
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append({**json.loads(line[6:]), "received_s": time.time()})
                if self._stop.is_set():
                    return

    def subjects_for(self, token: str) -> list[str]:
        return [e["subject"] for e in self.events if token in e["subject"]]

    def close(self) -> None:
        self._stop.set()
