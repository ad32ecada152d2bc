"""SSE streams of one API process share a NATS subscription per subject filter (real nats-server)."""

from __future__ import annotations

import asyncio

import nats

from services.api.event_fanout import EventFanout
from tests.integration.nats_server import nats_server


async def _settle(nc) -> None:
    await nc.flush()
    await asyncio.sleep(0.1)


def test_streams_on_one_subject_share_one_subscription_and_each_gets_every_event():
    async def scenario() -> None:
        with nats_server() as url:
            nc = await nats.connect(url)
            try:
                fanout = EventFanout(nc)
                got: dict[str, list[str]] = {"a": [], "b": [], "t": []}
                leave_a = await fanout.follow("vmflow.evt.>", lambda m: got["a"].append(m.subject))
                leave_b = await fanout.follow("vmflow.evt.>", lambda m: got["b"].append(m.subject))
                leave_t = await fanout.follow("vmflow.evt.vm.t1.>", lambda m: got["t"].append(m.subject))
                assert fanout.subscriptions() == 2
                for subject in ("vmflow.evt.vm.t1.x.state", "vmflow.evt.vm.t2.y.state"):
                    await nc.publish(subject, b"{}")
                await _settle(nc)
                assert got["a"] == got["b"] == ["vmflow.evt.vm.t1.x.state", "vmflow.evt.vm.t2.y.state"]
                assert got["t"] == ["vmflow.evt.vm.t1.x.state"]

                await leave_a()
                assert fanout.subscriptions() == 2  # b still follows it
                await nc.publish("vmflow.evt.host.h1.up", b"{}")
                await _settle(nc)
                assert got["a"][-1] != "vmflow.evt.host.h1.up" and got["b"][-1] == "vmflow.evt.host.h1.up"

                await leave_b()
                await leave_t()
                assert fanout.subscriptions() == 0
                # A stream that comes later subscribes anew.
                leave_c = await fanout.follow("vmflow.evt.>", lambda m: got["a"].append(m.subject))
                await nc.publish("vmflow.evt.host.h2.up", b"{}")
                await _settle(nc)
                assert got["a"][-1] == "vmflow.evt.host.h2.up"
                await leave_c()
            finally:
                await nc.close()

    asyncio.run(scenario())
