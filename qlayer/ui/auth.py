"""Who may use the dashboard: the holder of one secret, and only from its own pages.

``qlayer ui`` prints ``http://HOST:PORT/?token=SECRET``. Opening it sets the secret as an
HttpOnly, SameSite=Strict cookie and redirects to the same page without it (so the secret
leaves the address bar and the history). Every request then needs the cookie or an
``Authorization: Bearer SECRET`` header, else it gets 401. A request that changes
something (POST) also needs the page's CSRF token in the :data:`CSRF_HEADER` header —
which a page of another site cannot send — and, when the browser names one, an Origin
equal to the dashboard's own.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "qlayer_ui"
CSRF_HEADER = "X-Qlayer-CSRF"
UNAUTHORISED = (
    "401: this dashboard needs its token. Open the URL `qlayer ui` printed "
    "(http://HOST:PORT/?token=...) or send `Authorization: Bearer <token>`."
)


def csrf_token(secret: str) -> str:
    """The per-dashboard CSRF token pages carry: derived from the secret, not the secret."""
    return hmac.new(secret.encode(), b"qlayer-ui-csrf", hashlib.sha256).hexdigest()[:32]


def _same(supplied: str | None, expected: str) -> bool:
    return bool(supplied) and hmac.compare_digest(str(supplied).encode(), expected.encode())


class TokenGate:
    """ASGI middleware: 401 for any request without the secret; CSRF checks on POST.

    Args:
        app: The application behind the gate.
        secret: The token (``Home.token()`` of the local home).
    """

    def __init__(self, app: ASGIApp, secret: str) -> None:
        self.app = app
        self.secret = secret
        self.csrf = csrf_token(secret)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = self._check(request)
        if response is not None:
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, request: Request) -> Response | None:
        offered = request.query_params.get("token")
        if offered is not None:
            if not _same(offered, self.secret):
                return PlainTextResponse(UNAUTHORISED, status_code=401)
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            redirect.set_cookie(
                COOKIE, self.secret, httponly=True, samesite="strict", path="/", secure=False
            )
            redirect.headers["Referrer-Policy"] = "no-referrer"
            return redirect
        bearer = request.headers.get("authorization", "")
        supplied = bearer[7:] if bearer.lower().startswith("bearer ") else None
        if not (_same(request.cookies.get(COOKIE), self.secret) or _same(supplied, self.secret)):
            return PlainTextResponse(UNAUTHORISED, status_code=401)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if not _same(request.headers.get(CSRF_HEADER), self.csrf):
                return PlainTextResponse(
                    f"403: a change needs the page's {CSRF_HEADER} header", status_code=403
                )
            origin = request.headers.get("origin")
            own = f"{request.url.scheme}://{request.headers.get('host', '')}"
            if origin and origin != own:
                return PlainTextResponse(f"403: origin {origin} is not {own}", status_code=403)
        return None
