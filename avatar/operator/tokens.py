"""Operator sign-in tokens and failed-login rate limiting.

Tokens are random (256 bits), live ``ttl`` seconds from issue, and are kept in memory by
their SHA-256 only: a restart signs every operator out, which is the safe failure. Both
classes take a ``clock`` so tests can move time without sleeping.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class Grant:
    operator: str
    expires: float


def _key(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenBook:
    """Issued bearer tokens: issue, resolve (None when unknown, expired or revoked), revoke."""

    def __init__(self, ttl: float, clock: Clock = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError("token ttl must be positive")
        self.ttl = ttl
        self.clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, operator: str) -> str:
        self._forget_expired()
        token = secrets.token_urlsafe(32)
        self._grants[_key(token)] = Grant(operator, self.clock() + self.ttl)
        return token

    def resolve(self, token: str) -> str | None:
        """The operator the token was issued to, or None."""
        grant = self._grants.get(_key(token))
        if grant is None:
            return None
        if self.clock() >= grant.expires:
            del self._grants[_key(token)]
            return None
        return grant.operator

    def revoke(self, token: str) -> str | None:
        """Revoke one token; returns its operator when it was valid."""
        grant = self._grants.pop(_key(token), None)
        return grant.operator if grant is not None and self.clock() < grant.expires else None

    def revoke_operator(self, operator: str) -> int:
        """Revoke every token of ``operator`` (account removed); returns how many."""
        keys = [k for k, g in self._grants.items() if g.operator == operator]
        for k in keys:
            del self._grants[k]
        return len(keys)

    def _forget_expired(self) -> None:
        now = self.clock()
        for k in [k for k, g in self._grants.items() if now >= g.expires]:
            del self._grants[k]


class LoginLimiter:
    """At most ``max_failures`` failed logins per ``window`` seconds, counted separately per
    operator name (guessing one account's password from many addresses) and per client
    address (trying many names from one place)."""

    def __init__(self, max_failures: int = 5, window: float = 300.0, clock: Clock = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, name: str, address: str) -> float | None:
        """Seconds until another attempt is allowed, or None when it is allowed now."""
        now = self.clock()
        wait = 0.0
        for key in (f"name:{name.lower()}", f"addr:{address}"):
            times = self._recent(key, now)
            if len(times) >= self.max_failures:
                wait = max(wait, times[0] + self.window - now)
        return wait if wait > 0 else None

    def failed(self, name: str, address: str) -> None:
        now = self.clock()
        for key in (f"name:{name.lower()}", f"addr:{address}"):
            self._recent(key, now).append(now)

    def succeeded(self, name: str) -> None:
        self._failures.pop(f"name:{name.lower()}", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times and len(self._failures) > 10_000:
            # Bound memory under a spray of names: forget idle keys.
            for k in [k for k, v in self._failures.items() if not v]:
                del self._failures[k]
            times = self._failures.setdefault(key, deque())
        return times
