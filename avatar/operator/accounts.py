"""Operator accounts: names and scrypt password hashes in the store.

Hashes are ``scrypt$<n>$<r>$<p>$<salt b64>$<hash b64>`` (stdlib ``hashlib.scrypt``; about
16 MiB and tens of milliseconds per check, which is the point: a stolen store file cannot be
brute-forced cheaply). Verifying is slow on purpose, so callers on the event loop run
``OperatorAccounts.verify`` in a thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from avatar.store import OperatorRecord, Store

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024
# Names are shown in transcripts as the speaker; "customer" and "ai" are speakers already.
RESERVED_NAMES = frozenset({"customer", "ai", "system"})
_NAME_RE = re.compile(r"^[\w.@-]{1,64}$")


class AccountError(ValueError):
    """A name or password that cannot be used; the message says why."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches the ``stored`` hash; False for any malformed hash."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        n_i, r_i, p_i = int(n), int(r), int(p)
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=base64.b64decode(salt), n=n_i, r=r_i, p=p_i,
            maxmem=128 * r_i * n_i * 2, dklen=len(expected),
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


def check_name(name: str) -> str:
    if not _NAME_RE.fullmatch(name):
        raise AccountError("operator names are 1 to 64 letters, digits, '.', '_', '-' or '@'")
    if name.lower() in RESERVED_NAMES:
        raise AccountError(f"{name!r} is reserved (it names a speaker in transcripts)")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise AccountError(f"passwords need at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise AccountError(f"passwords have at most {MAX_PASSWORD_CHARS} characters")
    return password


class OperatorAccounts:
    """Accounts kept in ``store``. Blocking (scrypt, SQLite): call from a thread on the loop."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Checked when the name is unknown, so a wrong name costs as long as a wrong password
        # and response times do not reveal which names exist.
        self._decoy = hash_password(secrets.token_urlsafe(16))

    def add(self, name: str, password: str) -> None:
        """Create an account. Raises ``AccountError`` or ``avatar.store.DuplicateOperator``."""
        check_name(name)
        check_password(password)
        self.store.add_operator(name, hash_password(password)).result()

    def remove(self, name: str) -> bool:
        return bool(self.store.remove_operator(name).result())

    def list(self) -> list[OperatorRecord]:
        return self.store.operators()

    def verify(self, name: str, password: str) -> bool:
        record = self.store.operator(name) if _NAME_RE.fullmatch(name) else None
        if record is None:
            verify_password(password, self._decoy)
            return False
        return verify_password(password, record.password_hash)
