"""``vmflow vm console``: a VM's serial console in this terminal, like ``virsh console``.

Interactive (stdin is a terminal): raw mode, so every key (Ctrl-C included) goes to the guest;
Ctrl-] leaves; the terminal is restored however the session ends. Pipe mode (stdin is not a
terminal): stdin is sent as it is, and once it ends the session lasts until the guest has been
quiet for ``idle_exit_s``. When the VM moves to another host (websocket close 4000 ``vm_moved``)
the client connects again, a few times. Exit status: 0 when the user left, 1 otherwise.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import BinaryIO, TextIO

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)
from websockets.sync.client import ClientConnection, connect

from deploy.client import bearer_headers
from shared.console import WS_CLOSE_UNAUTHENTICATED, WS_CLOSE_VM_MOVED

ESCAPE = b"\x1d"  # Ctrl-]
_RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 3.0, 5.0)
_STABLE_SESSION_S = 10.0  # a session that lasted this long resets the reconnect count
_OPEN_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SessionEnd:
    by_user: bool  # Ctrl-], or the end of piped input
    code: int | None = None  # the websocket's close code; None when it never opened
    reason: str = ""
    lasted_s: float = 0.0


def console_url(api_url: str, vm_id: str) -> str:
    base = api_url.rstrip("/")
    if base.startswith("https://"):
        base = "wss://" + base[len("https://"):]
    elif base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return f"{base}/v1/vms/{vm_id}/console"


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode for the block; its settings restored on any exit."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def attach(api_url: str, vm_id: str, vm_name: str, *, token: str | None = None, stdin_fd: int | None = None,
           stdout: BinaryIO | None = None, stderr: TextIO | None = None, retries: int = 5,
           idle_exit_s: float = 2.0) -> int:
    """Run a console session until the user leaves or it ends; the process exit status.
    ``token`` authenticates the websocket's handshake (each reconnection's too)."""
    stdin_fd = sys.stdin.fileno() if stdin_fd is None else stdin_fd
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    interactive = os.isatty(stdin_fd)
    newline = "\r\n" if interactive else "\n"

    def say(text: str) -> None:
        stderr.write(text + newline)
        stderr.flush()

    url = console_url(api_url, vm_id)
    say(f"Connected to {vm_name} (escape character is ^])")
    moves = 0
    with raw_terminal(stdin_fd) if interactive else nullcontext():
        while True:
            end = _session(url, bearer_headers(token), stdin_fd, stdout, interactive, idle_exit_s)
            if end.by_user:
                return 0
            if end.lasted_s >= _STABLE_SESSION_S:
                moves = 0
            if end.code == WS_CLOSE_VM_MOVED and moves < retries:
                delay_s = _RECONNECT_DELAYS_S[min(moves, len(_RECONNECT_DELAYS_S) - 1)]
                moves += 1
                say(f"[{vm_name} moved to another host: connecting again ({moves}/{retries})]")
                time.sleep(delay_s)
                continue
            detail = end.reason or (f"closed with code {end.code}" if end.code else "connection lost")
            if end.code == WS_CLOSE_UNAUTHENTICATED:
                detail += "; log in with `vmflow login` or set VMFLOW_TOKEN"
            say(f"[console of {vm_name} closed: {detail}]")
            return 1


def _session(url: str, headers: dict[str, str], stdin_fd: int, stdout: BinaryIO, interactive: bool,
             idle_exit_s: float) -> SessionEnd:
    """One websocket connection, stdin to it and it to stdout, until either side ends."""
    started = time.monotonic()
    connection = ExitStack()
    try:
        ws = connection.enter_context(connect(url, open_timeout=_OPEN_TIMEOUT_S, max_size=2**22,
                                              additional_headers=headers))
    except InvalidStatus as exc:
        return SessionEnd(False, None, _refusal(exc.response.status_code, bool(headers)))
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        return SessionEnd(False, None, f"cannot connect to {url}: {exc}")
    with connection:
        by_user = _relay(ws, stdin_fd, stdout, interactive, idle_exit_s)
    lasted_s = time.monotonic() - started
    if by_user:
        return SessionEnd(True, ws.close_code, "", lasted_s)
    return SessionEnd(False, ws.close_code, ws.close_reason or "", lasted_s)


def _refusal(status: int, sent_token: bool) -> str:
    """Why the API refused the handshake, in words (a refused websocket handshake says no more
    than its HTTP status)."""
    if status in (401, 403) and not sent_token:
        return f"refused ({status}): no API token; log in with `vmflow login` or set VMFLOW_TOKEN"
    if status in (401, 403):
        return (f"refused ({status}): the token was not accepted, or its role may not open a console "
                "(a member's at least); see `vmflow whoami`")
    return f"refused: HTTP {status}"


def _relay(ws: ClientConnection, stdin_fd: int, stdout: BinaryIO, interactive: bool, idle_exit_s: float) -> bool:
    """Guest output to stdout on a thread, stdin to the guest here. True when the user left."""
    gone = threading.Event()
    last_output = [time.monotonic()]

    def show_output() -> None:
        try:
            for message in ws:
                stdout.write(message if isinstance(message, bytes) else message.encode())
                stdout.flush()
                last_output[0] = time.monotonic()
        except (ConnectionClosed, OSError):  # closed, or stdout is (a pipe reader that left)
            pass
        finally:
            gone.set()

    reader = threading.Thread(target=show_output, name="console-output", daemon=True)
    reader.start()
    try:
        return _send_input(ws, stdin_fd, interactive, idle_exit_s, gone, last_output)
    except ConnectionClosed:
        return False
    finally:
        ws.close()
        reader.join(5)


def _send_input(ws: ClientConnection, stdin_fd: int, interactive: bool, idle_exit_s: float,
                gone: threading.Event, last_output: list[float]) -> bool:
    """stdin to the websocket until the user leaves (True) or the connection ends (False)."""
    stdin_open = True
    while not gone.is_set():
        if not stdin_open:
            # Piped input is all sent: leave once the guest has had its say.
            if time.monotonic() - last_output[0] >= idle_exit_s:
                return True
            gone.wait(0.05)
            continue
        ready, _, _ = select.select([stdin_fd], [], [], 0.1)
        if not ready:
            continue
        data = os.read(stdin_fd, 4096)
        if not data:
            stdin_open = False
            last_output[0] = max(last_output[0], time.monotonic())
            continue
        if interactive and ESCAPE in data:
            if before := data[: data.index(ESCAPE)]:
                ws.send(before)
            return True
        ws.send(data)
    return False
