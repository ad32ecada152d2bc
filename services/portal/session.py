"""The portal's session: the user's API token in an HttpOnly, SameSite=Strict cookie, and a CSRF
token derived from it that every form carries.

The cookie alone never changes anything: the API takes it for reads and the console only, and the
portal's forms are refused without the CSRF token, which a page of another site cannot read.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from shared.auth import SESSION_COOKIE

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def csrf_token(api_token: str) -> str:
    """Bound to the session's token: a new sign-in gives a new one, and nothing is stored."""
    return hmac.new(api_token.encode(), b"vmflow portal forms", hashlib.sha256).hexdigest()


def csrf_ok(api_token: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(api_token), presented)


@dataclass(frozen=True)
class CookiePolicy:
    max_age_s: int
    secure: bool  # over HTTPS only; off for the plain-HTTP loopback of a lab

    def set_args(self, token: str, expires_in_s: float | None) -> dict:
        max_age = self.max_age_s if expires_in_s is None else max(0, min(self.max_age_s, int(expires_in_s)))
        return {"key": SESSION_COOKIE, "value": token, "max_age": max_age, "httponly": True,
                "samesite": "strict", "secure": self.secure, "path": "/"}
