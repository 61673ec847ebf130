"""The integration API token (``Authorization: Bearer <token>``).

Set with ``AVATAR_API_TOKEN`` or ``api_token`` in the configuration; when neither is set
a token is generated on first start and kept in ``<data_dir>/api_token`` (mode 0600),
so integrations keep working across restarts.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from aiohttp import web

log = logging.getLogger(__name__)


def load_or_create_token(configured: str | None, data_dir: Path) -> str:
    if configured:
        return configured
    path = data_dir / "api_token"
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            log.info("API token read from %s", path)
            return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    log.warning("no API token configured: generated one and stored it in %s", path.resolve())
    return token


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def require_api_token(request: web.Request, expected: str) -> None:
    """Raise 401 unless the request carries the API token."""
    given = bearer_token(request)
    if given is None:
        raise web.HTTPUnauthorized(
            text='{"error": "missing Authorization: Bearer <token>"}',
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise web.HTTPUnauthorized(
            text='{"error": "invalid token"}',
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
