"""Typed events: each knows its subject, and a consumer gets the type back from an envelope."""

from __future__ import annotations

import json

from shared import codec, events


class Recorder:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict, str | None]] = []

    async def publish(self, subject: str, data: dict, event_id: str | None = None) -> None:
        self.published.append((subject, data, event_id))


async def test_events_publish_on_their_subject_with_their_fields():
    recorder = Recorder()
    await events.publish(recorder, events.VmMoved("v1", "t1", "h1", "h2", "op"), event_id="op-moved")
    await events.publish(recorder, events.OperationStep("op", "t1", "v1", "succeeded", None, "succeeded"))
    await events.publish(recorder, events.HostLiveness("h3", "failed", "no heartbeat"))
    assert [s for s, _, _ in recorder.published] == [
        "vmflow.evt.vm.t1.v1.moved", "vmflow.evt.op.t1.op.succeeded", "vmflow.evt.host.h3.failed"]
    assert recorder.published[0][1] == {"vm_id": "v1", "tenant": "t1", "from_host_id": "h1", "host_id": "h2",
                                        "operation_id": "op"}
    assert recorder.published[0][2] == "op-moved"


def envelope(event_type: str, source: str, data: dict) -> bytes:
    return json.dumps({"id": "x", "type": event_type, "subject": "s", "source": source, "time_s": 1.0,
                       "data": data}).encode()


def test_a_consumer_gets_lifecycle_facts_and_nothing_else():
    fact = events.DomainLifecycle("v1", "h1", "t1", "stopped", "failed", 12.5)
    raw = envelope("stopped", "host-worker/h1", codec.to_jsonable(fact))
    assert events.lifecycle_from(raw) == fact
    assert events.lifecycle_from(envelope("state", "api", {"vm_id": "v1"})) is None
    assert events.lifecycle_from(envelope("stopped", "api", codec.to_jsonable(fact))) is None


def test_an_event_becomes_one_sse_message_without_being_parsed_again():
    from types import SimpleNamespace

    from services.api.routes.events import sse_frame

    data = json.dumps({"id": "e1", "type": "state", "data": {"state": "running"}}).encode()
    msg = SimpleNamespace(subject="vmflow.evt.vm.acme.v1.state", data=data, headers={"Nats-Msg-Id": "e1"})
    assert sse_frame(msg, named=True) == b"id: e1\nevent: state\ndata: " + data + b"\n\n"
    assert sse_frame(msg, named=False) == b"id: e1\ndata: " + data + b"\n\n"
    bare = SimpleNamespace(subject=msg.subject, data=data, headers=None)  # no id header: from the envelope
    assert sse_frame(bare, named=False).startswith(b"id: e1\n")
