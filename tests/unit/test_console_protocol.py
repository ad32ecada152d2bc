"""The console protocol's pure parts: joining history and live output, close codes and
reasons, reading a log's tail, why a stream ended."""

from __future__ import annotations

import pytest

from services.host_worker.console_sessions import ended_because, read_tail
from shared import codec, subjects
from shared.console import (
    WS_CLOSE_SESSION_ENDED,
    WS_CLOSE_VM_MOVED,
    WS_CLOSE_VM_STOPPED,
    CloseReason,
    ConsoleClosed,
    trim_overlap,
    ws_close_for,
    ws_reason,
)


@pytest.mark.parametrize(("history", "live", "expected"), [
    # What the log had already when it was read is not shown twice...
    (b"counter 1\r\ncounter 2\r\n", b"counter 2\r\ncounter 3\r\n", b"counter 3\r\n"),
    (b"counter 1\r\ncounter 2\r\ncoun", b"counter 3\r\n", b"ter 3\r\n"),  # a line half-logged
    # ...and nothing else is lost.
    (b"counter 1\r\ncounter 2\r\n", b"counter 3\r\n", b"counter 3\r\n"),
    (b"abc", b"abc", b""),
    (b"", b"abc", b"abc"),
    (b"abc", b"", b""),
])
def test_live_output_loses_only_what_the_history_ends_with(history, live, expected):
    assert trim_overlap(history, live) == expected


def test_close_codes_and_reasons_a_client_can_act_on():
    moved = ConsoleClosed(CloseReason.VM_MOVED, "the VM left this host")
    assert ws_close_for(moved) == (WS_CLOSE_VM_MOVED, "vm_moved")
    stopped = ConsoleClosed(CloseReason.VM_STOPPED, "the VM is shutoff")
    assert ws_close_for(stopped) == (WS_CLOSE_VM_STOPPED, "vm_stopped")
    failed = ConsoleClosed(CloseReason.ERROR, "libvirt: gone")
    assert ws_close_for(failed) == (WS_CLOSE_SESSION_ENDED, "error: libvirt: gone")
    silent = ConsoleClosed(CloseReason.KEEPALIVE_TIMEOUT)
    assert ws_close_for(silent) == (WS_CLOSE_SESSION_ENDED, "keepalive_timeout")


def test_a_reason_fits_a_close_frame_without_splitting_a_character():
    long = "é" * 100  # 200 bytes
    cut = ws_reason(long)
    assert len(cut.encode()) <= 123 and cut.endswith("...") and cut.startswith("éé")
    assert ws_reason("vm_moved") == "vm_moved"


def test_closed_frames_round_trip_through_the_codec():
    closed = ConsoleClosed(CloseReason.ERROR, "stream failed")
    assert codec.decode(ConsoleClosed, codec.encode(closed)) == closed


@pytest.mark.parametrize(("state", "shutoff_reason", "expected"), [
    ("absent", "", CloseReason.VM_MOVED),
    ("shutoff", "migrated", CloseReason.VM_MOVED),
    ("shutoff", "destroyed", CloseReason.VM_STOPPED),
    ("crashed", "", CloseReason.VM_STOPPED),
    ("running", "", None),
    ("paused", "", None),  # the end of a live migration pauses the source first
])
def test_why_a_stream_ended(state, shutoff_reason, expected):
    assert ended_because(state, shutoff_reason) is expected


def test_history_is_the_log_tail_from_a_line_start(tmp_path):
    log = tmp_path / "vm.log"
    assert read_tail(log, 4096) == b""
    log.write_bytes(b"".join(b"line %d\r\n" % n for n in range(1000)))
    tail = read_tail(log, 100)
    assert tail.startswith(b"line ") and tail.endswith(b"line 999\r\n") and len(tail) <= 100
    log.write_bytes(b"short\r\n")
    assert read_tail(log, 100) == b"short\r\n"


def test_console_subjects():
    assert subjects.console_open("h1") == "vmflow.console.h1.open"
    assert subjects.console_output("abc") == "vmflow.console.session.abc.out"
    assert subjects.console_input("abc") == "vmflow.console.session.abc.in"
    with pytest.raises(ValueError):
        subjects.console_output("a.b")
