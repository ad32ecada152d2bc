"""Following the API's server-sent events from a test."""

from __future__ import annotations

import json
import threading
import time

import httpx


class EventTap:
    """Collects the SSE stream of /v1/events in a thread."""

    def __init__(self, base_url: str) -> None:
        self.events: list[dict] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "SSE stream did not open"

    def _run(self, base_url: str) -> None:
        with httpx.stream("GET", f"{base_url}/v1/events", timeout=None) as response:
            self._ready.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append({**json.loads(line[6:]), "received_s": time.time()})
                if self._stop.is_set():
                    return

    def subjects_for(self, token: str) -> list[str]:
        return [e["subject"] for e in self.events if token in e["subject"]]

    def close(self) -> None:
        self._stop.set()
