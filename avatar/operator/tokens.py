"""Operator sign-in tokens and failed-login rate limiting.

Tokens are random (256 bits), live ``ttl`` seconds from issue, and are kept by their SHA-256
only (the store never holds a usable token). Three books share one interface:

- ``TokenBook``: in memory; a restart signs every operator out (unit tests, throw-away servers).
- ``SqliteTokenBook``: ``<data_dir>/tokens.sqlite3``, the server's default. Sign-ins survive a
  restart, every process on the machine that shares the data directory accepts them, and
  ``avatar operator remove NAME`` revokes that operator's tokens at once (the CLI deletes
  their rows; every ``resolve`` reads the file, an indexed lookup of a few microseconds).
- ``avatar.cluster.tokens.RedisTokenBook``: in cluster mode (``redis_url``), shared by every
  process on every machine.

Times are wall-clock (``time.time``), so expiry means the same after a restart. Every book
takes a ``clock`` so tests can move time without sleeping.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]
TOKENS_FILE = "tokens.sqlite3"


@dataclass
class Grant:
    operator: str
    expires: float


def token_key(token: str) -> str:
    """What a book keeps of a token: its SHA-256 in hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


_key = token_key


class TokenBook:
    """Issued bearer tokens: issue, resolve (None when unknown, expired or revoked), revoke.
    This base keeps them in memory; subclasses override the five storage methods."""

    def __init__(self, ttl: float, clock: Clock = time.time) -> None:
        if ttl <= 0:
            raise ValueError("token ttl must be positive")
        self.ttl = ttl
        self.clock = clock
        self._grants: dict[str, Grant] = {}

    def issue(self, operator: str) -> str:
        self._forget_expired(self.clock())
        token = secrets.token_urlsafe(32)
        self._put(_key(token), Grant(operator, self.clock() + self.ttl))
        return token

    def resolve(self, token: str) -> str | None:
        """The operator the token was issued to, or None."""
        key = _key(token)
        grant = self._get(key)
        if grant is None:
            return None
        if self.clock() >= grant.expires:
            self._delete(key)
            return None
        return grant.operator

    def revoke(self, token: str) -> str | None:
        """Revoke one token; returns its operator when it was valid."""
        grant = self._delete(_key(token))
        return grant.operator if grant is not None and self.clock() < grant.expires else None

    def revoke_operator(self, operator: str) -> int:
        """Revoke every token of ``operator`` (account removed); returns how many."""
        return self._delete_operator(operator)

    def close(self) -> None:
        """Release what the book holds open (nothing for the in-memory one)."""

    # -- storage -----------------------------------------------------------------------------
    def _put(self, key: str, grant: Grant) -> None:
        self._grants[key] = grant

    def _get(self, key: str) -> Grant | None:
        return self._grants.get(key)

    def _delete(self, key: str) -> Grant | None:
        return self._grants.pop(key, None)

    def _delete_operator(self, operator: str) -> int:
        keys = [k for k, g in self._grants.items() if g.operator == operator]
        for k in keys:
            del self._grants[k]
        return len(keys)

    def _forget_expired(self, now: float) -> None:
        for k in [k for k, g in self._grants.items() if now >= g.expires]:
            del self._grants[k]


class SqliteTokenBook(TokenBook):
    """Tokens in an SQLite file (WAL), shared by every process and the CLI on one machine.

    ``synchronous=NORMAL``: a power cut may forget the last sign-ins (their operators sign in
    again); a killed process forgets nothing. Calls are short indexed statements, made on the
    caller's thread under a lock."""

    def __init__(self, path: Path, ttl: float, clock: Clock = time.time) -> None:
        super().__init__(ttl, clock)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (key TEXT PRIMARY KEY, operator TEXT NOT NULL, expires REAL NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS tokens_operator ON tokens (operator)")

    @classmethod
    def in_data_dir(cls, data_dir: Path, ttl: float, clock: Clock = time.time) -> SqliteTokenBook:
        return cls(Path(data_dir) / TOKENS_FILE, ttl, clock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _put(self, key: str, grant: Grant) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tokens (key, operator, expires) VALUES (?, ?, ?)",
                (key, grant.operator, grant.expires),
            )

    def _get(self, key: str) -> Grant | None:
        with self._lock:
            row = self._db.execute("SELECT operator, expires FROM tokens WHERE key = ?", (key,)).fetchone()
        return Grant(row[0], float(row[1])) if row is not None else None

    def _delete(self, key: str) -> Grant | None:
        with self._lock:
            row = self._db.execute("DELETE FROM tokens WHERE key = ? RETURNING operator, expires", (key,)).fetchone()
        return Grant(row[0], float(row[1])) if row is not None else None

    def _delete_operator(self, operator: str) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM tokens WHERE operator = ?", (operator,)).rowcount

    def _forget_expired(self, now: float) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tokens WHERE expires <= ?", (now,))


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
