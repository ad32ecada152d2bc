"""Tenants, users and API tokens. Blocking: call from threads.

Token secrets are stored only as Argon2 hashes (pwdlib). Argon2 is slow on purpose, so a
secret verified once is remembered for ``cache_s`` as a SHA-256 digest in this process (and a
wrong one refused without hashing again); the token's row (revoked? expired? its role) is still
read on every request, so revocation and expiry take effect at once on every API replica.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import delete, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from services.api.db import lookup
from services.api.models import PlacementGroup, Vm, utcnow
from services.api.network_models import Network
from services.api.quota_store import lock_tenant
from services.api.tenancy_models import (
    ApiToken,
    QuotaHold,
    Tenant,
    TenantCreate,
    TokenCreate,
    User,
)
from shared.auth import Principal, Role, new_token, parse_token
from shared.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated

_TOKENS, _USERS = ApiToken.__table__, User.__table__
_TOKEN_ROW = (select(_TOKENS.c.id, _TOKENS.c.tenant, _TOKENS.c.role, _TOKENS.c.secret_hash, _TOKENS.c.expires_at,
                     _TOKENS.c.revoked_at, _USERS.c.name.label("user"))
              .join(_USERS, _USERS.c.id == _TOKENS.c.user_id))
_MAX_REFUSED = 10_000
BOOTSTRAP_TENANT = "default"
BOOTSTRAP_USER = "admin"


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; every time here is UTC.
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _child_expiry(caller: Principal | None, expires_in_s: int | None) -> datetime | None:
    """When a new token expires: as asked, and never after the token that makes it (so a leaked
    short-lived token cannot mint itself a lasting one). Raises InvalidRequest past that."""
    expires = utcnow() + timedelta(seconds=expires_in_s) if expires_in_s else None
    if caller is None or caller.expires_at_s is None:
        return expires
    limit = datetime.fromtimestamp(caller.expires_at_s, UTC)
    if expires is None:
        return limit
    if expires > limit:
        raise InvalidRequest(f"expires_in_s: at most {max(0, int((limit - utcnow()).total_seconds()))} s: "
                             f"the token asking expires at {limit:%Y-%m-%d %H:%M:%S} UTC")
    return expires


class IdentityStore:
    def __init__(self, engine: Engine, cache_s: float = 60.0, hasher: PasswordHash | None = None) -> None:
        self._engine = engine
        self._hasher = hasher or PasswordHash((Argon2Hasher(),))
        self._cache_s = cache_s
        self._verified: dict[str, tuple[bytes, float]] = {}
        self._refused: dict[tuple[str, bytes], float] = {}  # wrong secrets seen lately, per token
        self._lock = threading.Lock()

    # -- tenants -----------------------------------------------------------------------------

    def add_tenant(self, body: TenantCreate) -> Tenant:
        """Raises Conflict when the name is taken."""
        limits = {f"quota_{name}": value for name, value in body.quota.model_dump().items()}
        with Session(self._engine) as session:
            session.add(Tenant(id=body.name, description=body.description, **limits))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                old = session.get(Tenant, body.name)
                if old is not None and old.deleted_at is not None:
                    raise Conflict(f"a tenant named '{body.name}' existed until {_aware(old.deleted_at):%Y-%m-%d}; "
                                   "tenant names are not reused (its audit trail keeps the name)") from None
                raise Conflict(f"a tenant named '{body.name}' already exists") from None
            return session.get(Tenant, body.name)

    def tenant(self, tenant_id: str) -> Tenant:
        with Session(self._engine) as session:
            row = lookup(session, Tenant, tenant_id)
            if row is None or row.deleted_at is not None:
                raise NotFound(f"no tenant '{tenant_id}'")
            return row

    def tenants(self, visible: str | None) -> list[Tenant]:
        with Session(self._engine) as session:
            query = select(Tenant).where(Tenant.deleted_at.is_(None)).order_by(Tenant.created_at)
            if visible is not None:
                query = query.where(Tenant.id == visible)
            return list(session.exec(query))

    def remove_tenant(self, tenant_id: str, caller: Principal) -> None:
        """Refused (409) while the tenant holds anything, and for the caller's own tenant. Its
        users and tokens go with it; its name stays taken (a tombstone)."""
        if tenant_id == caller.tenant:
            raise Conflict(f"tenant '{tenant_id}' is the one your token acts in; use another admin's token")
        with Session(self._engine) as session:
            lock_tenant(session, tenant_id)  # nothing of the tenant's is made meanwhile
            held = [what for what, table in (("VMs", Vm), ("networks", Network), ("placement groups", PlacementGroup),
                                             ("quota holds", QuotaHold))
                    if session.exec(select(table).where(table.tenant == tenant_id)).first() is not None]
            if held:
                raise Conflict(f"tenant '{tenant_id}' still has {', '.join(held)}; delete them first")
            session.exec(delete(ApiToken).where(ApiToken.tenant == tenant_id))
            session.exec(delete(User).where(User.tenant == tenant_id))
            session.exec(update(Tenant).where(Tenant.id == tenant_id).values(deleted_at=utcnow()))
            session.commit()

    # -- users -------------------------------------------------------------------------------

    def add_user(self, tenant_id: str, name: str) -> User:
        self.tenant(tenant_id)
        with Session(self._engine) as session:
            session.add(user := User(tenant=tenant_id, name=name))
            try:
                session.commit()
            except IntegrityError:
                raise Conflict(f"tenant '{tenant_id}' has a user named '{name}' already") from None
            session.refresh(user)
            return user

    def users(self, tenant_id: str) -> list[User]:
        self.tenant(tenant_id)
        with Session(self._engine) as session:
            return list(session.exec(select(User).where(User.tenant == tenant_id).order_by(User.created_at)))

    def remove_user(self, tenant_id: str, name: str) -> None:
        """The user goes with every token it had."""
        with Session(self._engine) as session:
            user = session.exec(select(User).where(User.tenant == tenant_id, User.name == name)).first()
            if user is None:
                raise NotFound(f"tenant '{tenant_id}' has no user named '{name}'")
            session.exec(delete(ApiToken).where(ApiToken.user_id == user.id))
            session.delete(user)
            session.commit()

    def _user(self, session: Session, tenant_id: str, name: str, create: bool) -> User:
        user = session.exec(select(User).where(User.tenant == tenant_id, User.name == name)).first()
        if user is None:
            if not create:
                raise NotFound(f"tenant '{tenant_id}' has no user named '{name}'")
            session.add(user := User(tenant=tenant_id, name=name))
            session.flush()
        return user

    # -- tokens ------------------------------------------------------------------------------

    def issue(self, caller: Principal | None, body: TokenCreate) -> tuple[ApiToken, str, str]:
        """A new token: (row, user name, the token string to show once). A caller may not give
        more than it has: its role at most, its own tenant and user unless it is an admin.
        ``caller`` None is the platform itself (the first admin token)."""
        if caller is not None and not caller.role.allows(body.role):
            raise Forbidden(f"a {caller.role} token cannot make a {body.role} token")
        tenant_id = body.tenant or (caller.tenant if caller else BOOTSTRAP_TENANT)
        user_name = body.user or (caller.user if caller else BOOTSTRAP_USER)
        if caller is not None and not caller.is_admin:
            if tenant_id != caller.tenant:
                raise InvalidRequest(f"tenant: no tenant '{tenant_id}'")
            if user_name != caller.user:
                raise Forbidden("only an admin makes tokens for another user")
        parts, text = new_token()
        with Session(self._engine) as session:
            tenant = session.get(Tenant, tenant_id)
            if tenant is None or tenant.deleted_at is not None:
                raise InvalidRequest(f"tenant: no tenant '{tenant_id}'")
            user = self._user(session, tenant_id, user_name, create=caller is None or caller.is_admin)
            expires = _child_expiry(caller, body.expires_in_s)
            row = ApiToken(id=parts.token_id, user_id=user.id, tenant=tenant_id, role=body.role,
                           secret_hash=self._hasher.hash(parts.secret), description=body.description,
                           created_by=caller.token_id if caller else None, expires_at=expires)
            session.add(row)
            session.commit()
            session.refresh(row)
            return row, user.name, text

    def tokens(self, caller: Principal) -> list[tuple[ApiToken, str]]:
        """An admin sees every token; anyone else the tokens of its own user no stronger than
        its own (a reader token cannot revoke its user's member token)."""
        with Session(self._engine) as session:
            query = select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
            if not caller.is_admin:
                query = query.where(ApiToken.tenant == caller.tenant, User.name == caller.user)
            rows = session.exec(query.order_by(ApiToken.created_at)).all()
            return [(row, user) for row, user in rows if caller.role.allows(Role(row.role))]

    def token(self, token_id: str, caller: Principal) -> tuple[ApiToken, str]:
        """Raises NotFound for a token the caller may not see (as ``tokens`` shows them)."""
        with Session(self._engine) as session:
            found = session.exec(select(ApiToken, User.name).join(User, User.id == ApiToken.user_id)
                                 .where(ApiToken.id == token_id)).first()
        if found is not None:
            row, user = found
            mine = row.tenant == caller.tenant and user == caller.user and caller.role.allows(Role(row.role))
            if caller.is_admin or mine:
                return row, user
        raise NotFound(f"no token '{token_id}'")

    def revoke(self, token_id: str, caller: Principal) -> tuple[ApiToken, str]:
        """Takes effect on the token's next request; revoking twice is harmless."""
        self.token(token_id, caller)
        with Session(self._engine) as session:
            session.exec(update(ApiToken).where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
                         .values(revoked_at=utcnow()))
            session.commit()
        with self._lock:
            self._verified.pop(token_id, None)
        return self.token(token_id, caller)

    def authenticate(self, text: str) -> Principal:
        """The principal a token acts as. Raises Unauthenticated, saying why."""
        parts = parse_token(text)
        if parts is None:
            raise Unauthenticated("malformed token: expected 'Bearer vmf_<16 hex>_<43 characters>'")
        with self._engine.connect() as connection:  # Core, not the ORM: a tenth of the time per request
            row = connection.execute(_TOKEN_ROW.where(_TOKENS.c.id == parts.token_id)).first()
        if row is None:
            raise Unauthenticated("unknown token")
        user = row.user
        if not self._secret_ok(row, parts.secret):  # first: only the holder learns more
            raise Unauthenticated("unknown token")
        if row.revoked_at is not None:
            raise Unauthenticated(f"token {row.id} was revoked at {_aware(row.revoked_at):%Y-%m-%d %H:%M:%S} UTC")
        if row.expires_at is not None and _aware(row.expires_at) <= datetime.now(UTC):
            raise Unauthenticated(f"token {row.id} expired at {_aware(row.expires_at):%Y-%m-%d %H:%M:%S} UTC")
        expires_at = _aware(row.expires_at)
        return Principal(row.id, user, row.tenant, Role(row.role), expires_at.timestamp() if expires_at else None)

    def _secret_ok(self, row, secret: str) -> bool:
        digest = hashlib.sha256(secret.encode()).digest()
        now = time.monotonic()
        with self._lock:
            cached = self._verified.get(row.id)
        if cached is not None and cached[1] > now and hmac.compare_digest(cached[0], digest):
            return True
        with self._lock:
            if self._refused.get((row.id, digest), 0.0) > now:  # the same wrong secret again: no Argon2
                return False
        if not self._hasher.verify(secret, row.secret_hash):
            with self._lock:
                if len(self._refused) > _MAX_REFUSED:
                    self._refused.clear()
                self._refused[(row.id, digest)] = now + self._cache_s
            return False
        with self._lock:
            self._verified[row.id] = (digest, now + self._cache_s)
        return True

    # -- the first admin ---------------------------------------------------------------------

    def ensure_admin_token(self, path: Path) -> bool:
        """Make sure ``path`` holds a working admin token, readable by its owner only: kept when
        it works, made (user 'admin' of tenant 'default') when it does not. True when made."""
        if path.exists():
            try:
                if self.authenticate(path.read_text()).is_admin:
                    return False
            except Unauthenticated:
                pass
        _row, _user, text = self.issue(None, TokenCreate(role=Role.ADMIN, description="the first admin token"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)  # a leftover may have any mode; O_EXCL makes a fresh 0600 file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
        return True
