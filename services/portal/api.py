"""The API as the signed-in user: every call goes through the API's own routes in process (no
socket), with the user's token, so what the API refuses the portal cannot do either."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from starlette.types import ASGIApp


def api_path(*segments: str) -> str:
    """``/v1/<segment>/...`` with each segment quoted whole: an id from a URL or a form never
    reaches another route (``../tokens``)."""
    return "/v1/" + "/".join(quote(segment, safe="") for segment in segments)


@dataclass
class ApiRefusal(Exception):
    """The API answered 4xx/5xx; ``problems`` are its per-field reasons when it gave them."""

    status: int
    code: str
    message: str
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


class PortalApi:
    def __init__(self, app: ASGIApp, token: str) -> None:
        # An API failure comes back as its answer (a 500 naming the request's id), never as the
        # API's exception raised into the page.
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://portal.internal",
            headers={"Authorization": f"Bearer {token}"})

    async def __aenter__(self) -> PortalApi:
        return self

    async def __aexit__(self, *exc) -> None:
        await self._client.aclose()

    async def call(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Any:
        """The answer's JSON; raises ApiRefusal with the API's code and reasons."""
        reply = await self._answer(method, path, json, params)
        return reply.json() if reply.content else None

    async def get_page(self, path: str, **params: Any) -> tuple[Any, str | None]:
        """A listing's page and the token of the next one (None: it was the last)."""
        reply = await self._answer("GET", path, None, params)
        return reply.json(), reply.headers.get("x-next-page-token")

    async def _answer(self, method: str, path: str, json: Any, params: dict | None) -> httpx.Response:
        """The answer; raises ApiRefusal with the API's code and reasons."""
        params = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        reply = await self._client.request(method, path, json=json, params=params)
        if reply.status_code >= 400:
            try:
                error = reply.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": reply.text[:200] or reply.reason_phrase}
            message = error.get("message", "")
            problems = error.get("details") or [part.strip() for part in message.split(";") if part.strip()]
            raise ApiRefusal(reply.status_code, error.get("code", "error"), message, problems)
        return reply

    async def get(self, path: str, **params: Any) -> Any:
        return await self.call("GET", path, params=params)

    async def get_or(self, default: Any, path: str, **params: Any) -> Any:
        """For a page's side panels: what the user may not see (403/404) shows as ``default``."""
        try:
            return await self.get(path, **params)
        except ApiRefusal as exc:
            if exc.status in (403, 404):
                return default
            raise
