"""Security headers on every response of the apps that serve the page and the API.

The Content-Security-Policy fits the page (`inkwell/web/`): its script, style sheet and API
calls come from its own origin; images are drawn from `data:` and `blob:` URLs (the favicon,
a dropped cheque). Nothing may frame the page (clickjacking the rollout buttons). The API's
JSON gets the same headers: harmless there, and one rule is easier to check than two.
FastAPI's interactive docs load Swagger UI from a CDN with an inline script, so the docs paths
get every header but the CSP.

The answer headers a model route adds for the router live in `inkwell.contract`.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
PAGE_HEADERS = (*BASE_HEADERS, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()))
DOCS_PATHS = ("/docs", "/redoc", "/router/docs")


def security_headers(path: str) -> tuple[tuple[bytes, bytes], ...]:
    """The headers every response to `path` carries."""
    return BASE_HEADERS if path.startswith(DOCS_PATHS) else PAGE_HEADERS


def with_security_headers(send: Send, path: str) -> Send:
    """`send`, adding the security headers to the response start (kept if already set)."""
    extra = security_headers(path)

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            present = {name.lower() for name, _ in headers}
            headers.extend(header for header in extra if header[0] not in present)
            message = {**message, "headers": headers}
        await send(message)

    return send_with_headers


class SecurityHeadersMiddleware:
    """Pure ASGI: every HTTP response gets the security headers (see module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, with_security_headers(send, str(scope["path"])))
