"""Tenants, users and API tokens on real databases (SQLite, PostgreSQL): what a token proves, what a caller
may hand out, and the first admin token on disk."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from services.api.db import Inventory
from services.api.identity_store import IdentityStore
from services.api.models import Vm
from services.api.network_store import NetworkStore
from services.api.tenancy_models import ApiToken, TenantCreate, TokenCreate
from shared.auth import Principal, Role, new_token, parse_token
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated

# Argon2 with small costs: the same algorithm and format, a fraction of the time per check.
QUICK_ARGON2 = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024),))


@pytest.fixture
def store(engine):
    return IdentityStore(engine, cache_s=0.2, hasher=QUICK_ARGON2)


# Argon2 takes ~0.2 s a hash or a check, so callers are principals built from the token's row
# (what ``authenticate`` returns for it); the tests about authenticating authenticate for real.
@pytest.fixture
def admin(store) -> Principal:
    return _principal(*store.issue(None, TokenCreate(role=Role.ADMIN))[:2])


def _principal(row: ApiToken, user: str) -> Principal:
    return Principal(row.id, user, row.tenant, Role(row.role))


def _token_for(store: IdentityStore, admin: Principal, tenant: str, user: str, role: Role) -> tuple[str, Principal]:
    row, user_name, text = store.issue(admin, TokenCreate(role=role, tenant=tenant, user=user))
    return text, _principal(row, user_name)


def _tenants(store: IdentityStore, *names: str) -> None:
    for name in names:
        store.add_tenant(TenantCreate(name=name))


# -- the token format --------------------------------------------------------------------------


def test_a_new_token_parses_back_into_its_parts():
    parts, text = new_token()
    assert text.startswith("vmf_")
    assert parse_token(text) == parts
    assert parse_token(f"  {text}\n") == parts


@pytest.mark.parametrize("text", ["", "vmf_", "banana", "vmf_0123456789abcdef_short",
                                  "vmf_0123456789ABCDEF_" + "a" * 43, "xyz_0123456789abcdef_" + "a" * 43])
def test_anything_but_a_well_formed_token_does_not_parse(text):
    assert parse_token(text) is None


def test_roles_are_ordered_reader_member_admin():
    assert Role.ADMIN.allows(Role.MEMBER) and Role.MEMBER.allows(Role.READER) and Role.READER.allows(Role.READER)
    assert not Role.READER.allows(Role.MEMBER) and not Role.MEMBER.allows(Role.ADMIN)


def test_only_an_admin_sees_other_tenants_and_the_fleet():
    member = Principal("t1", "bob", "a", Role.MEMBER)
    assert member.sees("a") and not member.sees("b") and not member.sees(None)
    assert member.visible_tenant == "a"
    admin = Principal("t2", "admin", "default", Role.ADMIN)
    assert admin.sees("b") and admin.sees(None) and admin.visible_tenant is None


# -- issuing and authenticating ------------------------------------------------------------------


def test_the_platform_issues_the_first_token_as_admin_of_default(store):
    row, user, text = store.issue(None, TokenCreate(role=Role.ADMIN, description="first"))
    assert (user, row.tenant, row.role, row.created_by) == ("admin", "default", Role.ADMIN, None)
    assert store.authenticate(text) == Principal(row.id, "admin", "default", Role.ADMIN)


def test_only_an_argon2_hash_of_the_secret_is_stored(store):
    row, _user, text = store.issue(None, TokenCreate(role=Role.ADMIN))
    secret = parse_token(text).secret
    assert row.secret_hash.startswith("$argon2")
    assert secret not in row.secret_hash
    assert text not in row.secret_hash


def test_a_wrong_secret_is_refused(store):
    row, _user, _text = store.issue(None, TokenCreate(role=Role.ADMIN))
    with pytest.raises(Unauthenticated, match="unknown token"):
        store.authenticate(f"vmf_{row.id}_{new_token()[0].secret}")


def test_a_wrong_secret_is_refused_while_the_right_one_is_cached(engine):
    store = IdentityStore(engine, cache_s=60, hasher=QUICK_ARGON2)
    row, _user, text = store.issue(None, TokenCreate(role=Role.ADMIN))
    store.authenticate(text)
    with pytest.raises(Unauthenticated, match="unknown token"):
        store.authenticate(f"vmf_{row.id}_{new_token()[0].secret}")


def test_a_malformed_token_is_refused_saying_so(store):
    with pytest.raises(Unauthenticated, match="malformed"):
        store.authenticate("Bearer hunter2")


def test_a_token_nobody_issued_is_refused(store):
    with pytest.raises(Unauthenticated, match="unknown token"):
        store.authenticate(new_token()[1])


def test_a_token_still_works_after_its_cached_secret_expires(store):
    _row, _user, text = store.issue(None, TokenCreate(role=Role.ADMIN))
    first = store.authenticate(text)
    time.sleep(0.3)  # past cache_s: Argon2 checks the secret again
    assert store.authenticate(text) == first


def test_a_revoked_token_is_refused_at_once_even_by_a_replica_that_cached_it(engine, store, admin):
    replica = IdentityStore(engine, cache_s=60, hasher=QUICK_ARGON2)  # another API process with its own cache
    _row, _user, text = store.issue(admin, TokenCreate(role=Role.MEMBER))
    victim = replica.authenticate(text)
    row, _user = store.revoke(victim.token_id, admin)
    assert row.revoked_at is not None
    with pytest.raises(Unauthenticated, match="revoked"):
        replica.authenticate(text)
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(text)


def test_revoking_twice_keeps_the_first_revocation_time(store, admin):
    _row, _user, text = store.issue(admin, TokenCreate(role=Role.READER))
    token_id = parse_token(text).token_id
    first, _ = store.revoke(token_id, admin)
    second, _ = store.revoke(token_id, admin)
    assert first.revoked_at == second.revoked_at


def test_an_expired_token_is_refused_saying_so(store):
    row, _user, text = store.issue(None, TokenCreate(role=Role.ADMIN, expires_in_s=1))
    assert row.expires_at is not None
    time.sleep(1.1)  # no authenticate before: under load Argon2 alone can outlast the one second
    with pytest.raises(Unauthenticated, match="expired"):
        store.authenticate(text)


# -- what a caller may hand out -------------------------------------------------------------------


def test_a_reader_cannot_make_a_member_token(store, admin):
    _tenants(store, "a")
    _text, reader = _token_for(store, admin, "a", "bob", Role.READER)
    with pytest.raises(Forbidden, match="a reader token cannot make a member token"):
        store.issue(reader, TokenCreate(role=Role.MEMBER))


def test_a_member_cannot_make_an_admin_token(store, admin):
    _tenants(store, "a")
    _text, member = _token_for(store, admin, "a", "bob", Role.MEMBER)
    with pytest.raises(Forbidden):
        store.issue(member, TokenCreate(role=Role.ADMIN))


def test_a_member_makes_tokens_for_itself_no_stronger_than_its_own(store, admin):
    _tenants(store, "a")
    _text, member = _token_for(store, admin, "a", "bob", Role.MEMBER)
    row, user, text = store.issue(member, TokenCreate(role=Role.READER))
    assert (row.tenant, user, row.role, row.created_by) == ("a", "bob", Role.READER, member.token_id)
    assert store.authenticate(text).role is Role.READER


def test_a_member_cannot_make_a_token_in_another_tenant(store, admin):
    _tenants(store, "a", "b")
    _text, member = _token_for(store, admin, "a", "bob", Role.MEMBER)
    with pytest.raises(InvalidRequest, match="no tenant 'b'"):
        store.issue(member, TokenCreate(role=Role.READER, tenant="b"))


def test_a_member_cannot_make_a_token_for_another_user(store, admin):
    _tenants(store, "a")
    _text, member = _token_for(store, admin, "a", "bob", Role.MEMBER)
    with pytest.raises(Forbidden, match="another user"):
        store.issue(member, TokenCreate(role=Role.READER, user="carol"))
    assert [u.name for u in store.users("a")] == ["bob"]


def test_an_admin_makes_a_token_for_a_new_user_of_another_tenant(store, admin):
    _tenants(store, "b")
    row, user, text = store.issue(admin, TokenCreate(role=Role.MEMBER, tenant="b", user="carol"))
    assert (row.tenant, user) == ("b", "carol")
    assert [u.name for u in store.users("b")] == ["carol"]
    assert store.authenticate(text) == Principal(row.id, "carol", "b", Role.MEMBER)


def test_a_token_for_a_tenant_that_does_not_exist_is_refused(store, admin):
    with pytest.raises(InvalidRequest, match="no tenant 'ghost'"):
        store.issue(admin, TokenCreate(role=Role.READER, tenant="ghost"))


def test_a_non_admin_lists_only_its_own_users_tokens(store, admin):
    _tenants(store, "a")
    _text, bob = _token_for(store, admin, "a", "bob", Role.MEMBER)
    store.issue(bob, TokenCreate(role=Role.READER))
    _token_for(store, admin, "a", "carol", Role.MEMBER)
    listed = store.tokens(bob)
    assert len(listed) == 2
    assert {(row.tenant, user) for row, user in listed} == {("a", "bob")}
    assert len(store.tokens(admin)) == 4  # the admin's own, bob's two and carol's


def test_a_non_admin_cannot_see_or_revoke_another_users_token(store, admin):
    _tenants(store, "a")
    _text, bob = _token_for(store, admin, "a", "bob", Role.MEMBER)
    carol_text, carol = _token_for(store, admin, "a", "carol", Role.MEMBER)
    with pytest.raises(NotFound):
        store.token(carol.token_id, bob)
    with pytest.raises(NotFound):
        store.revoke(carol.token_id, bob)
    assert store.authenticate(carol_text) == carol


# -- the first admin token on disk --------------------------------------------------------------


def test_the_admin_token_file_is_private_and_authenticates_as_admin(store, tmp_path):
    path = tmp_path / "run" / "admin-token"
    assert store.ensure_admin_token(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = store.authenticate(path.read_text())
    assert (principal.role, principal.tenant, principal.user) == (Role.ADMIN, "default", "admin")


def test_a_working_admin_token_file_is_kept(store, tmp_path):
    path = tmp_path / "admin-token"
    store.ensure_admin_token(path)
    content = path.read_text()
    assert store.ensure_admin_token(path) is False
    assert path.read_text() == content


def test_a_revoked_admin_token_file_is_replaced(store, tmp_path):
    path = tmp_path / "admin-token"
    store.ensure_admin_token(path)
    old = store.authenticate(path.read_text())
    store.revoke(old.token_id, old)
    assert store.ensure_admin_token(path) is True
    assert store.authenticate(path.read_text()).token_id != old.token_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_leftover_temporary_file_does_not_make_the_admin_token_readable_by_others(store, tmp_path):
    path = tmp_path / "admin-token"
    leftover = path.with_suffix(".tmp")  # a crash between writing and renaming leaves this
    leftover.write_text("")
    os.chmod(leftover, 0o644)
    store.ensure_admin_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- tenants ------------------------------------------------------------------------------------


def test_a_tenant_name_is_taken_once(store):
    _tenants(store, "a")
    with pytest.raises(Conflict, match="'a' already exists"):
        _tenants(store, "a")


def test_a_non_admin_sees_only_its_own_tenant(store):
    _tenants(store, "a", "b")
    assert [t.id for t in store.tenants("a")] == ["a"]
    assert [t.id for t in store.tenants(None)] == ["default", "a", "b"]


def test_an_admin_cannot_remove_the_tenant_its_token_acts_in(store, admin):
    with pytest.raises(Conflict, match="your token acts in"):
        store.remove_tenant("default", admin)


def test_a_tenant_with_a_vm_is_not_removed(engine, store, admin):
    _tenants(store, "a")
    vm = NetworkStore(engine).add_vm(Vm(name="web", vcpus=1, memory_mib=64, disk_gib=1, image="lab-guest",
                                        tenant="a"), [])
    with pytest.raises(Conflict, match="still has VMs"):
        store.remove_tenant("a", admin)
    assert store.tenant("a").id == "a"
    Inventory(engine).remove(vm.id)
    store.remove_tenant("a", admin)
    with pytest.raises(NotFound):
        store.tenant("a")


def test_removing_a_tenant_removes_its_users_and_tokens(engine, store, admin):
    _tenants(store, "a")
    text, _bob = _token_for(store, admin, "a", "bob", Role.MEMBER)
    store.remove_tenant("a", admin)
    with pytest.raises(Unauthenticated, match="unknown token"):
        store.authenticate(text)
    assert all(row.tenant != "a" for row, _ in store.tokens(admin))
    with pytest.raises(NotFound):
        store.users("a")


def test_removing_a_tenant_that_does_not_exist_is_not_found(store, admin):
    with pytest.raises(NotFound, match="ghost"):
        store.remove_tenant("ghost", admin)



def test_a_tenant_removed_while_a_vm_is_created_never_leaves_the_vm_behind(engine, store, admin):
    networks = NetworkStore(engine)
    for i in range(20):  # one race is lost or won by chance; twenty are not
        tenant = f"t{i}"
        _tenants(store, tenant)
        outcomes: dict[str, object] = {}
        start = threading.Barrier(2)

        def remove(tenant=tenant, outcomes=outcomes, start=start):
            start.wait()
            try:
                store.remove_tenant(tenant, admin)
                outcomes["removed"] = True
            except Conflict:
                outcomes["removed"] = False

        def create(tenant=tenant, outcomes=outcomes, start=start):
            start.wait()
            try:
                networks.add_vm(Vm(name="web", vcpus=1, memory_mib=64, disk_gib=1, image="lab-guest",
                                   tenant=tenant), [])
                outcomes["created"] = True
            except NotFound:
                outcomes["created"] = False

        threads = [threading.Thread(target=remove), threading.Thread(target=create)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not (outcomes["removed"] and outcomes["created"]), f"race {i}: a VM outlived tenant {tenant}"


def test_a_token_never_outlives_the_token_that_made_it(store):
    parent_row, _user, parent_text = store.issue(None, TokenCreate(role=Role.MEMBER, expires_in_s=600))
    parent = store.authenticate(parent_text)
    assert parent.expires_at_s is not None
    unbounded, _u, _t = store.issue(parent, TokenCreate(role=Role.READER))
    assert unbounded.expires_at is not None
    assert abs(unbounded.expires_at.replace(tzinfo=None) - parent_row.expires_at.replace(tzinfo=None)).total_seconds() < 1
    with pytest.raises(InvalidRequest, match="expires_in_s: at most"):
        store.issue(parent, TokenCreate(role=Role.READER, expires_in_s=3600))
    shorter, _u, _t = store.issue(parent, TokenCreate(role=Role.READER, expires_in_s=60))
    assert shorter.expires_at < parent_row.expires_at


def test_a_deleted_tenants_name_is_not_given_to_a_new_tenant(store, engine):
    admin = store.authenticate(store.issue(None, TokenCreate(role=Role.ADMIN))[2])
    store.add_tenant(TenantCreate(name="gone"))
    store.remove_tenant("gone", admin)
    with pytest.raises(NotFound):
        store.tenant("gone")
    assert "gone" not in {t.id for t in store.tenants(None)}
    with pytest.raises(Conflict, match="not reused"):
        store.add_tenant(TenantCreate(name="gone"))
    with pytest.raises(InvalidRequest, match="no tenant 'gone'"):
        store.issue(admin, TokenCreate(role=Role.READER, tenant="gone", user="x"))
