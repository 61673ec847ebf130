"""Security for the public face of the server: response headers, client addresses behind
proxies, WebSocket origin checks, sessions per client, data-channel message rates, TLS and
time-limited TURN credentials.

Every piece reads the one ``Settings`` object; nothing here keeps module-level state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from avatar.config import Settings

log = logging.getLogger(__name__)

# -- headers ------------------------------------------------------------------------------------


def content_security_policy(settings: Settings) -> str:
    """The pages load scripts, styles and images only from this server (no inline code), talk
    only to it (fetch, WebSocket), and play media from WebRTC streams (``blob:``/``mediastream:``)."""
    ancestors = " ".join(settings.frame_ancestors) or "'none'"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            "media-src 'self' blob: mediastream:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            f"frame-ancestors {ancestors}",
        ]
    )


def security_headers(settings: Settings) -> dict[str, str]:
    """The headers every response carries (pages, API answers, errors, static files)."""
    headers = {
        "Content-Security-Policy": content_security_policy(settings),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # The customer's page and the mirror need the microphone and camera, from this origin only.
        "Permissions-Policy": "microphone=(self), camera=(self), geolocation=(), payment=(), usb=()",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if settings.frame_ancestors == ["'none'"]:
        headers["X-Frame-Options"] = "DENY"  # for browsers without CSP frame-ancestors
    elif settings.frame_ancestors == ["'self'"]:
        headers["X-Frame-Options"] = "SAMEORIGIN"
    if settings.tls_cert is not None:
        headers["Strict-Transport-Security"] = "max-age=31536000"
    return headers


def install_headers(app: web.Application, settings: Settings) -> None:
    """Add the security headers to every response of ``app`` (``on_response_prepare`` also
    reaches static files and error pages, which a middleware would miss)."""
    headers = security_headers(settings)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        for key, value in headers.items():
            response.headers.setdefault(key, value)

    app.on_response_prepare.append(add_headers)


# -- client addresses -------------------------------------------------------------------------


def _networks(entries: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in entries]


def _trusted(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request: web.Request, trusted_proxies: list[str]) -> str:
    """The customer's address. ``X-Forwarded-For`` is believed only when the connection comes
    from a trusted proxy, and then read from the right, skipping trusted hops: a client can
    prepend anything it likes, but the entry the last trusted proxy appended is real."""
    peer = request.remote or "unknown"
    networks = _networks(trusted_proxies)
    if not networks or not _trusted(peer, networks):
        return peer
    header = ",".join(request.headers.getall("X-Forwarded-For", []))
    hops = [h.strip() for h in header.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else peer


# -- WebSocket origins ----------------------------------------------------------------------------


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Whether a WebSocket upgrade may proceed. Browsers always send ``Origin``; a page of another
    site opening the operator socket (cross-site WebSocket hijacking) is refused unless its origin
    is listed in ``allowed_origins`` ("*": any). Same origin: the Origin's host and port are the
    ones the browser asked for (the ``Host`` header, which a reverse proxy must pass on).
    Clients that are not browsers send no Origin and are let through: they authenticate anyway."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.strip().rstrip("/")
    if "*" in allowed or origin in (a.rstrip("/") for a in allowed):
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    default = 443 if parts.scheme == "https" else 80
    host = request.headers.get("Host", "")
    wanted = urlsplit(f"//{host}")
    if not wanted.hostname:
        return False
    try:
        wanted_port = wanted.port
        origin_port = parts.port
    except ValueError:
        return False
    # With no port in Host, the browser used the scheme's default port (the Origin's scheme).
    return wanted.hostname == parts.hostname and (wanted_port or default) == (origin_port or default)


def require_origin(request: web.Request, settings: Settings) -> None:
    """Raise 403 for a WebSocket upgrade from an origin that is not allowed."""
    if not origin_allowed(request, settings.allowed_origins):
        log.warning("refused a WebSocket from origin %r", request.headers.get("Origin"))
        raise web.HTTPForbidden(
            text='{"error": "origin not allowed"}', content_type="application/json"
        )


# -- sessions per client --------------------------------------------------------------------------


class TooManySessions(Exception):
    """The client address already holds ``max_sessions_per_client`` live sessions."""


class ClientLimiter:
    """Counts live sessions (and offers being answered) per client address."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: dict[str, int] = {}
        self._owner: dict[str, str] = {}  # session id -> client address

    def live(self, address: str) -> int:
        return self._count.get(address, 0)

    @contextmanager
    def admit(self, address: str) -> Iterator[Callable[[str], None]]:
        """Reserve a place for ``address`` while its offer is answered; the caller binds the new
        session id with the yielded function. The place is given back if the offer fails, and
        by ``release(session_id)`` when the session ends. Raises ``TooManySessions``."""
        if self.live(address) >= self.limit:
            raise TooManySessions(f"too many sessions from this address (limit {self.limit})")
        self._count[address] = self.live(address) + 1
        bound: list[str] = []

        def bind(session_id: str) -> None:
            self._owner[session_id] = address
            bound.append(session_id)

        try:
            yield bind
        except BaseException:
            self._drop(address)
            for session_id in bound:
                self._owner.pop(session_id, None)
            raise

    def release(self, session_id: str) -> None:
        address = self._owner.pop(session_id, None)
        if address is not None:
            self._drop(address)

    def _drop(self, address: str) -> None:
        left = self.live(address) - 1
        if left > 0:
            self._count[address] = left
        else:
            self._count.pop(address, None)


# -- data-channel message rates -------------------------------------------------------------------


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; each message takes one. ``clock`` is injectable
    (a fake one in tests)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def rate_limited(
    handle: Callable[[Any], None],
    emit: Callable[[dict[str, Any]], None],
    settings: Settings,
    clock: Callable[[], float] = time.monotonic,
    on_limited: Callable[[], None] | None = None,
) -> Callable[[Any], None]:
    """Wrap a data-channel message handler with a token bucket: a message over the rate is
    dropped and answered with one ``error`` event (one per burst of excess, not one per message,
    so a flood cannot turn into a flood back)."""
    bucket = TokenBucket(settings.channel_rate, settings.channel_burst, clock)
    warned = False

    def limited(message: Any) -> None:
        nonlocal warned
        if bucket.allow():
            warned = False
            handle(message)
            return
        if on_limited is not None:
            on_limited()
        if not warned:
            warned = True
            emit({"type": "error", "message": "too many messages: slow down", "code": "rate_limited"})

    return limited


# -- TURN credentials (the coturn REST API scheme) ------------------------------------------------


def turn_credentials(
    secret: str, ttl: int, now: float | None = None, tag: str | None = None
) -> tuple[str, str]:
    """A time-limited TURN username and password as coturn's ``use-auth-secret`` checks them:
    username ``"<expiry unix time>:<tag>"``, password ``base64(HMAC-SHA1(secret, username))``.
    The tag is random: it names no customer."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{tag or secrets.token_hex(4)}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_ice_servers(settings: Settings, now: float | None = None) -> list[dict[str, Any]]:
    """The TURN entry for the page's ``iceServers`` (none without ``turn_secret``)."""
    if not settings.turn_secret or not settings.turn_urls:
        return []
    username, credential = turn_credentials(settings.turn_secret, settings.turn_ttl, now)
    return [{"urls": list(settings.turn_urls), "username": username, "credential": credential}]


# -- TLS -------------------------------------------------------------------------------------------


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from ``tls_cert``/``tls_key`` (TLS 1.2 or later), or None."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return context
