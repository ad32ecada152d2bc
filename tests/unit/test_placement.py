"""Placement on plain values: filters, the rejection trail, weighing, claims and liveness."""

from __future__ import annotations

from services.scheduler.claims import ClaimBook, HostClaims
from services.scheduler.host_state import Claim, HostState, build_host_states
from services.scheduler.placement import PlacementPolicy, WeighPolicy, choose_host
from shared.models import DomainSummary, HostHeartbeat, PlacementRequest


def host(host_id: str, *, vcpus_used: int = 0, mem_used: int = 0, alive: bool = True,
         enabled: bool = True, libvirt_ok: bool = True, vcpus: int = 4, mem: int = 8192,
         **fields) -> HostState:
    values = dict(disk_gib_total=100, disk_gib_used=0)
    return HostState(host_id, alive, enabled, libvirt_ok, fields.pop("domain_type", "qemu"), vcpus, mem,
                     vcpus_used, mem_used, 0, 1.0 if alive else 60.0, **{**values, **fields})


def req(vcpus: int = 1, mem: int = 1024) -> PlacementRequest:
    return PlacementRequest("vm-1", vcpus, mem, 1)


def test_spread_picks_the_emptiest_host():
    decision = choose_host([host("h1", mem_used=4096), host("h2", mem_used=1024)], req(), PlacementPolicy())
    assert decision.host is not None and decision.host.host_id == "h2"


def test_pack_picks_the_fullest_host_that_still_fits():
    hosts = [host("h1", mem_used=4096), host("h2", mem_used=1024), host("h3", mem_used=8000)]
    decision = choose_host(hosts, req(), PlacementPolicy(weigh=WeighPolicy.PACK))
    assert decision.host is not None and decision.host.host_id == "h1"  # h3 lacks RAM


def test_equal_hosts_tie_break_on_lowest_id():
    decision = choose_host([host("h3"), host("h1"), host("h2")], req(), PlacementPolicy())
    assert decision.host is not None and decision.host.host_id == "h1"


def test_cpu_overcommit_ratio_is_applied():
    h = host("h1", vcpus=2, vcpus_used=7)
    assert choose_host([h], req(vcpus=1), PlacementPolicy(cpu_allocation_ratio=4.0)).host is not None
    assert choose_host([h], req(vcpus=2), PlacementPolicy(cpu_allocation_ratio=4.0)).host is None


def test_no_valid_host_explains_which_filter_removed_which_host():
    hosts = [host("h1", alive=False), host("h2", enabled=False), host("h3", mem_used=8000),
             host("h4", libvirt_ok=False)]
    decision = choose_host(hosts, req(mem=1024), PlacementPolicy())
    assert decision.host is None
    trail = decision.explain()
    assert "host_up removed h1 (no heartbeat for 60 s), h4 (libvirt unreachable)" in trail
    assert "host_enabled removed h2 (disabled)" in trail
    assert "ram removed h3 (needs 1024 MiB, 192 of 8192 MiB free)" in trail


def test_no_hosts_at_all_says_so():
    assert choose_host([], req(), PlacementPolicy()).explain() == "no hosts are known to the scheduler"


def beat(host_id: str, sent_at_s: float, domains=()) -> HostHeartbeat:
    return HostHeartbeat(host_id, sent_at_s, True, "qemu", 4, 8192, tuple(domains), disk_gib=100)


def test_host_states_count_domains_and_pending_claims_once():
    domains = [DomainSummary("a", "running", 1, 512)]
    claims = [Claim("a", "h1", 1, 512, 1, 100.0), Claim("b", "h1", 2, 1024, 1, 100.0)]
    (state,) = build_host_states({"h1": beat("h1", 50.0, domains)}, claims, now_s=51.0, heartbeat_timeout_s=10)
    assert (state.vcpus_used, state.memory_mib_used, state.domain_count) == (3, 1536, 2)


def test_expired_claims_and_stale_heartbeats():
    claims = [Claim("b", "h1", 2, 1024, 1, expires_at_s=40.0)]
    (state,) = build_host_states({"h1": beat("h1", 20.0)}, claims, now_s=50.0, heartbeat_timeout_s=10)
    assert state.memory_mib_used == 0
    assert not state.alive and state.last_heartbeat_age_s == 30.0


def test_claim_book_mirrors_the_newest_entry_and_forgets_expired_claims():
    book = ClaimBook()
    a, b = Claim("a", "h1", 1, 512, 1, 60.0), Claim("b", "h1", 1, 512, 1, 60.0)
    assert book.apply(HostClaims("h1", (a, b), revision=3))
    assert not book.apply(HostClaims("h1", (a,), revision=2))  # older than what it holds
    assert book.hosts_of("b") == {"h1"} and book.get("b") == b
    assert book.forget("h1", {"a"}) and [c.vm_id for c in book.live(now_s=1)] == ["b"]
    assert book.entry("h1").revision == 3  # the store still holds 'a' until the host's next write
    assert book.live(now_s=61) == [] and book.hosts_of("b") == set()


def grouped(host_id: str, group: str, members: int = 1, **kw) -> HostState:
    return host(host_id, group_members={group: members}, **kw)


def group_req(policy: str, hard: bool) -> PlacementRequest:
    from shared.models import GroupPolicy, GroupRule

    return PlacementRequest("vm-1", 1, 512, 1, group=GroupRule("g", GroupPolicy(policy), hard))


def test_domain_type_and_labels_filter_with_reasons():
    hosts = [host("h1", domain_type="qemu"), host("h2", domain_type="kvm", labels=frozenset({"ssd"})),
             host("h3", domain_type="kvm")]
    req_ = PlacementRequest("vm-1", 1, 512, 1, domain_types=("kvm",), required_labels=("ssd",))
    decision = choose_host(hosts, req_, PlacementPolicy())
    assert decision.host.host_id == "h2"
    trail = decision.explain()
    assert "domain_type removed h1 (runs qemu guests, the image needs kvm)" in trail
    assert "labels removed h3 (lacks label ssd)" in trail


def test_hard_anti_affinity_excludes_hosts_with_members():
    hosts = [grouped("h1", "g"), grouped("h2", "g"), host("h3", mem_used=7000)]
    assert choose_host(hosts, group_req("anti-affinity", True), PlacementPolicy()).host.host_id == "h3"
    full = choose_host(hosts[:2], group_req("anti-affinity", True), PlacementPolicy())
    assert full.host is None
    assert "group removed h1 (anti-affinity group g already has a member here), h2" in full.explain()


def test_hard_affinity_follows_the_first_member():
    hosts = [host("h1"), grouped("h2", "g", mem_used=6000), host("h3")]
    assert choose_host(hosts, group_req("affinity", True), PlacementPolicy()).host.host_id == "h2"
    # No member yet: any host qualifies, and the usual weighing picks one.
    assert choose_host([host("h1"), host("h2")], group_req("affinity", True), PlacementPolicy()).host


def test_soft_rules_weigh_but_never_filter():
    hosts = [grouped("h1", "g", mem_used=0), host("h2", mem_used=2048)]
    # Spread alone would pick h1 (more free RAM); soft anti-affinity outweighs it.
    assert choose_host(hosts, group_req("anti-affinity", False), PlacementPolicy()).host.host_id == "h2"
    only = choose_host(hosts[:1], group_req("anti-affinity", False), PlacementPolicy())
    assert only.host.host_id == "h1"  # still placed when nothing else fits
    affinity = [host("h1"), grouped("h2", "g", mem_used=4096)]
    assert choose_host(affinity, group_req("affinity", False), PlacementPolicy()).host.host_id == "h2"


def test_weigh_policy_is_per_cluster():
    policy = PlacementPolicy(cluster_weigh={"batch": WeighPolicy.PACK})
    batch = [host("b1", mem_used=1024, cluster="batch"), host("b2", mem_used=4096, cluster="batch")]
    assert choose_host(batch, req(), policy).host.host_id == "b2"
    web = [host("w1", mem_used=1024), host("w2", mem_used=4096)]
    assert choose_host(web, req(), policy).host.host_id == "w1"


def test_disabled_hosts_say_why_and_disk_is_checked():
    hosts = [host("h1", enabled=False, disabled_reason="firmware update"),
             host("h2", disk_gib_total=10, disk_gib_used=10)]
    trail = choose_host(hosts, req(), PlacementPolicy()).explain()
    assert "host_enabled removed h1 (disabled: firmware update)" in trail
    assert "disk removed h2 (needs 1 GiB, 0 of 10 GiB free)" in trail


def test_migration_targets_exclude_the_source_and_honour_a_requested_host():
    hosts = [host("h1"), host("h2", mem_used=4000), host("h3")]
    away = PlacementRequest("vm-1", 1, 512, 1, exclude_hosts=("h1",))
    assert choose_host(hosts, away, PlacementPolicy()).host.host_id == "h3"
    to_h2 = PlacementRequest("vm-1", 1, 512, 1, exclude_hosts=("h1",), only_host="h2")
    assert choose_host(hosts, to_h2, PlacementPolicy()).host.host_id == "h2"
    to_h1 = PlacementRequest("vm-1", 1, 512, 1, exclude_hosts=("h1",), only_host="h1")
    decision = choose_host(hosts, to_h1, PlacementPolicy())
    assert decision.host is None
    assert "requested_host removed h1 (excluded (the VM is there already)), h2 (not the requested host h1)" in decision.explain()
