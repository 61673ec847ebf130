"""Operator sign-in tokens: the in-memory book, the SQLite book shared by processes and the
CLI (surviving a restart, revoked at once by ``avatar operator remove``), and the Redis
book shared by every process of a cluster (against a real redis-server)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from avatar.cluster.base import Node
from avatar.cluster.redis_cluster import RedisCluster
from avatar.cluster.tokens import RedisTokenBook, revoke_operator_everywhere
from avatar.config import load_settings
from avatar.operator.tokens import TOKENS_FILE, SqliteTokenBook, TokenBook
from avatar.store import Store
from tests.test_cluster import RedisServer, eventually, redis_server  # noqa: F401  (the fixture)


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_issue_resolve_revoke_expire(kind: str, tmp_path: Path) -> None:
    clock = FakeClock()
    book = TokenBook(60, clock) if kind == "memory" else SqliteTokenBook(tmp_path / TOKENS_FILE, 60, clock)
    try:
        alice, alice2, bob = book.issue("alice"), book.issue("alice"), book.issue("bob")
        assert len({alice, alice2, bob}) == 3 and len(alice) >= 43  # 256 bits, url-safe
        assert (book.resolve(alice), book.resolve(bob)) == ("alice", "bob")
        assert book.resolve("not a token") is None and book.resolve("") is None
        assert book.revoke(alice) == "alice" and book.resolve(alice) is None
        assert book.revoke(alice) is None  # only once
        assert book.resolve(alice2) == "alice"
        assert book.revoke_operator("alice") == 1 and book.resolve(alice2) is None
        clock.now += 59.9
        assert book.resolve(bob) == "bob"
        clock.now += 0.1
        assert book.resolve(bob) is None  # expired at ttl
        assert book.revoke(bob) is None
    finally:
        book.close()
    with pytest.raises(ValueError):
        TokenBook(0)


def test_sqlite_book_is_shared_survives_a_restart_and_keeps_no_token(tmp_path: Path) -> None:
    clock = FakeClock()
    first = SqliteTokenBook.in_data_dir(tmp_path, 3600, clock)
    second = SqliteTokenBook.in_data_dir(tmp_path, 3600, clock)  # another process on the same data dir
    token = first.issue("alice")
    assert second.resolve(token) == "alice"
    first.close()
    restarted = SqliteTokenBook.in_data_dir(tmp_path, 3600, clock)
    assert restarted.resolve(token) == "alice"
    assert token.encode() not in (tmp_path / TOKENS_FILE).read_bytes()  # only its SHA-256 is kept
    # Issuing forgets expired grants.
    clock.now += 3601
    restarted.issue("bob")
    assert second.resolve(token) is None
    rows = restarted._db.execute("SELECT operator FROM tokens").fetchall()
    assert rows == [("bob",)]
    second.close()
    restarted.close()


def test_operator_remove_revokes_sign_ins_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with Store.in_data_dir(data) as store:
        from avatar.operator.accounts import OperatorAccounts

        OperatorAccounts(store).add("alice", "correct horse battery")
    server_book = SqliteTokenBook.in_data_dir(data, 3600)  # the running server's
    token = server_book.issue("alice")
    other = server_book.issue("bob")
    proc = subprocess.run(
        [sys.executable, "-m", "avatar", "operator", "remove", "alice", "--data-dir", str(data)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 sign-in(s) revoked" in proc.stdout
    assert server_book.resolve(token) is None  # no restart, no waiting for the expiry
    assert server_book.resolve(other) == "bob"
    server_book.close()


async def test_redis_book_shared_by_every_process(redis_server: RedisServer, tmp_path: Path) -> None:  # noqa: F811
    a = RedisCluster(redis_server.url, Node("a", "http://a"), heartbeat=0.1)
    b = RedisCluster(redis_server.url, Node("b", "http://b"), heartbeat=0.1)
    await a.start()
    await b.start()
    book_a, book_b = RedisTokenBook(a, 3600), RedisTokenBook(b, 3600)
    try:
        token = book_a.issue("alice")
        assert book_a.resolve(token) == "alice"  # at once where it was issued
        await book_a.drain()
        await book_b.prefetch(token)  # what the middleware does before a request on another process
        assert book_b.resolve(token) == "alice"
        # Tokens issued elsewhere also arrive by themselves.
        later = book_a.issue("bob")
        await eventually(lambda: book_b.resolve(later) == "bob")
        # Nothing usable in Redis: keys are hashes.
        assert not [k async for k in a.redis.scan_iter(match=f"*{token}*")]
        # Revoking on one process revokes everywhere.
        book_b.revoke(token)
        await eventually(lambda: book_a.resolve(token) is None)
        await book_b.drain()
        await book_a.prefetch(token)
        assert book_a.resolve(token) is None
        # `avatar operator remove` in cluster mode: Redis too, and every process's mirror.
        settings = load_settings(env={}, overrides={"data_dir": tmp_path, "redis_url": redis_server.url})
        assert await asyncio.to_thread(revoke_operator_everywhere, settings, "bob") == 1
        await eventually(lambda: book_a.resolve(later) is None and book_b.resolve(later) is None)
        # A token nobody issued is not found anywhere.
        await book_b.prefetch("made-up")
        assert book_b.resolve("made-up") is None
    finally:
        await a.close()
        await b.close()


async def test_redis_book_sign_ins_survive_a_redis_restart(redis_server: RedisServer) -> None:  # noqa: F811
    a = RedisCluster(redis_server.url, Node("a", "http://a"), heartbeat=0.1)
    b = RedisCluster(redis_server.url, Node("b", "http://b"), heartbeat=0.1)
    await a.start()
    await b.start()
    book_a, book_b = RedisTokenBook(a, 3600), RedisTokenBook(b, 3600)
    try:
        token = book_a.issue("alice")
        await book_a.drain()
        redis_server.restart()  # empty again
        await eventually(lambda: _in_redis(a, token), within=15)  # written back by the processes
        fresh = RedisCluster(redis_server.url, Node("c", "http://c"))
        await fresh.start()
        book_c = RedisTokenBook(fresh, 3600)
        await book_c.prefetch(token)
        assert book_c.resolve(token) == "alice"  # a process started after the restart accepts it
        await fresh.close()
        assert book_b.resolve(token) == "alice"
    finally:
        await a.close()
        await b.close()


async def _in_redis(cluster: RedisCluster, token: str) -> bool:
    from avatar.operator.tokens import token_key

    try:
        return bool(await cluster.redis.exists(cluster.key(f"token:{token_key(token)}")))
    except Exception:
        return False
