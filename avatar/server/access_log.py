"""The HTTP access log, written without the secrets and personal data URLs carry.

aiohttp's default line (``%a %t "%r" %s %b ...``) logs the whole request line: the overlay's
``?stage=...&key=...`` (a stage's view key, a secret), the customer page's ``?customer_id=``
(the bank's customer number, personal data), and the client's IP address. This logger writes
method, path, status, size and time, with every query value replaced by ``…`` (the names stay:
they say which page or option was asked for), and the client address only when the operator
of the server wants it (``access_log_ips``; resolved through ``trusted_proxies`` as the rest of
the server does). It logs through ``aiohttp.access`` as before, so the JSON log format and the
redaction of ``avatar.logs`` apply to it too.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from avatar.server.security import client_address

HIDDEN = "…"


def loggable_path(request: web.BaseRequest) -> str:
    """The request's path, its query values hidden (``/overlay.html?stage=…&key=…``)."""
    query = request.query_string
    if not query:
        return request.path
    names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    return request.path + "?" + "&".join(f"{name}={HIDDEN}" for name in names) if names else request.path


def access_logger(ips: bool, trusted_proxies: list[str]) -> type[AbstractAccessLogger]:
    """The access-logger class for ``web.run_app(access_log_class=...)``."""

    class AccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
            if not self.logger.isEnabledFor(logging.INFO):
                return
            client = client_address(request, trusted_proxies) if ips and isinstance(request, web.Request) else "-"
            self.logger.info(
                '%s "%s %s" %d %d %.1fms',
                client,
                request.method,
                loggable_path(request),
                response.status,
                response.body_length,
                time * 1000.0,
            )

    return AccessLogger
