"""Which peers a host watches: its successors in the ring of host ids, so each host has as many
witnesses and a heartbeat's peer report stays small in a large fleet."""

from __future__ import annotations

from collections import Counter

from services.host_worker.peers import ring_successors


def test_a_small_fleet_is_watched_whole():
    assert ring_successors("h2", ["h1", "h2", "h3"], 8) is None
    assert ring_successors("h1", [f"h{i}" for i in range(1, 10)], 8) is None  # 8 others: all of them


def test_each_host_watches_the_next_ones_and_is_watched_by_as_many():
    hosts = [f"h{i:04d}" for i in range(1000)]
    assert ring_successors("h0998", hosts, 3) == ("h0999", "h0000", "h0001")  # it wraps round
    watched_by = Counter(w for h in hosts for w in ring_successors(h, hosts, 8))
    assert set(watched_by) == set(hosts) and set(watched_by.values()) == {8}


def test_a_host_not_yet_in_the_list_still_finds_its_place():
    assert ring_successors("h5", ["h1", "h3", "h7", "h9"], 2) == ("h7", "h9")
