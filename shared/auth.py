"""Who is asking: roles, the principal a request acts as, and the API token format.

A token reads ``vmf_<id>_<secret>``: the id finds the stored row, the secret (32 random bytes)
is checked against its Argon2 hash. Only the hash is ever stored; the whole token is shown once.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "vmf_"
# The portal keeps the signed-in user's API token in this cookie (HttpOnly, SameSite=Strict); the
# API accepts it for reads and the console only.
SESSION_COOKIE = "vmflow_session"


def same_origin(origin: str | None, host: str | None) -> bool:
    """Whether a browser's request comes from a page of this server: its Origin names the Host it
    was sent to. No Origin (a client that is not a browser, an older browser): the caller's
    other checks decide. "null" (a sandboxed or privacy-redirected page) is never this server."""
    if origin is None:
        return True
    return origin.split("://", 1)[-1] == host


_TOKEN = re.compile(r"^vmf_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    """Ordered: each role may do what the ones before it may."""

    READER = "reader"  # see the tenant's objects
    MEMBER = "member"  # manage the tenant's VMs, volumes, snapshots, networks, placement groups
    ADMIN = "admin"  # the fleet and every tenant

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.READER: 0, Role.MEMBER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Principal:
    """The identity a request acts as, from its token."""

    token_id: str
    user: str
    tenant: str
    role: Role
    expires_at_s: float | None = None  # the token's expiry (epoch seconds); None: never

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def visible_tenant(self) -> str | None:
        """The tenant whose objects this principal sees; None for an admin, who sees all."""
        return None if self.is_admin else self.tenant

    def sees(self, tenant: str | None) -> bool:
        """Whether an object of ``tenant`` (None: the fleet's, no tenant) is visible."""
        return self.is_admin or (tenant is not None and tenant == self.tenant)


@dataclass(frozen=True)
class TokenParts:
    token_id: str
    secret: str


def new_token() -> tuple[TokenParts, str]:
    """A fresh token: its parts and the string handed to its owner once."""
    parts = TokenParts(secrets.token_hex(8), secrets.token_urlsafe(32))
    return parts, f"{TOKEN_PREFIX}{parts.token_id}_{parts.secret}"


def parse_token(text: str) -> TokenParts | None:
    """The parts of a well-formed token; None for anything else."""
    match = _TOKEN.fullmatch(text.strip())
    return TokenParts(match.group(1), match.group(2)) if match else None
