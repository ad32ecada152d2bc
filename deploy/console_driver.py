"""Drives a VM's shell through ``GET /v1/vms/{id}/console``: tests and benchmarks type into
guests with it, as a user would.

    with ConsoleDriver.for_vm(api_url, vm_id, token=token) as console:
        console.expect(r"# $", 30)          # the prompt
        out = console.run("ping -c 1 10.0.0.2", 20)
        assert console.last_status == 0

``run`` appends an end marker whose echo cannot match itself (``echo "__VMFLOW"_DONE_<t>_<n>_$?``
echoes with quotes; only its output reads ``__VMFLOW_DONE_<t>_<n>_<status>``, ``t`` this session's token) and returns what the
command printed, with the echoed command line left out and ``\\r\\n`` as ``\\n``. Output is kept
from the moment the socket opened (the console's history comes first); ``expect`` and ``run``
consume it up to their match, so each finds only what came after the previous one.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from contextlib import ExitStack

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deploy.client import bearer_headers

_MARKER = "__VMFLOW_DONE_"


def console_url(api_url: str, vm_id: str) -> str:
    base = api_url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{base}/v1/vms/{vm_id}/console"


class ConsoleClosedError(AssertionError):
    """The console closed while a test waited on it."""


class ConsoleDriver:
    def __init__(self, url: str, open_timeout_s: float = 10.0, headers: dict[str, str] | None = None) -> None:
        self._stack = ExitStack()
        self._ws = self._stack.enter_context(connect(url, open_timeout=open_timeout_s, max_size=2**22,
                                                     additional_headers=headers))
        self._text = ""  # everything received, decoded
        self._pos = 0  # where the next expect() starts looking
        self._changed = threading.Condition()
        self._runs = 0
        self._token = uuid.uuid4().hex[:8]
        self.last_status: int | None = None
        self.close_code: int | None = None
        self.close_reason = ""
        self._reader = threading.Thread(target=self._read, name="console-driver", daemon=True)
        self._reader.start()

    @classmethod
    def for_vm(cls, api_url: str, vm_id: str, open_timeout_s: float = 10.0,
               headers: dict[str, str] | None = None, token: str | None = None) -> ConsoleDriver:
        """The console of ``vm_id``; ``token`` authenticates the handshake (the API refuses a
        console to anyone below a member of the VM's tenant)."""
        return cls(console_url(api_url, vm_id), open_timeout_s, {**bearer_headers(token), **(headers or {})})

    def __enter__(self) -> ConsoleDriver:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self) -> None:
        try:
            for message in self._ws:
                text = message.decode(errors="replace") if isinstance(message, bytes) else message
                with self._changed:
                    self._text += text
                    self._changed.notify_all()
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason or ""
                self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return not self._reader.is_alive()

    @property
    def output(self) -> str:
        """Everything received so far."""
        with self._changed:
            return self._text

    def send(self, text: str) -> None:
        self._ws.send(text.encode())

    def expect(self, pattern: str | re.Pattern[str], timeout_s: float) -> re.Match[str]:
        """The first match of ``pattern`` in the output after the previous match; fails after
        ``timeout_s`` or when the console closes first (with what was seen)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                match = regex.search(self._text, self._pos)
                if match:
                    self._pos = match.end()
                    return match
                if not self._reader.is_alive():
                    raise ConsoleClosedError(
                        f"console closed ({self.close_code} {self.close_reason!r}) before {regex.pattern!r}; "
                        f"last output: {self._text[-500:]!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {regex.pattern!r} within {timeout_s:g} s; "
                                         f"last output: {self._text[-500:]!r}")
                self._changed.wait(min(left, 0.5))

    def run(self, cmd: str, timeout_s: float = 30.0) -> str:
        """Run ``cmd`` in the guest's shell; its output (``last_status`` gets its exit status).
        The end marker carries this session's own token: the console's history (an earlier
        session's commands) can never satisfy it."""
        self._runs += 1
        tag = f"{self._token}_{self._runs}"
        self.send(f'{cmd}; echo "__VMFLOW"_DONE_{tag}_$?\n')
        start = self._pos
        done = self.expect(re.compile(rf"{_MARKER}{tag}_(\d+)\r?\n"), timeout_s)
        self.last_status = int(done.group(1))
        with self._changed:
            text = self._text[start: done.start()]
        # Leave out the echo of the command line: it ends with the marker's quoted form.
        echoed = text.rfind(f'"__VMFLOW"_DONE_{tag}_$?')
        if echoed >= 0:
            line_end = text.find("\n", echoed)
            text = text[line_end + 1:] if line_end >= 0 else ""
        return text.replace("\r\n", "\n")

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self._reader.join(5)
