"""The SQLite store: schema, ordering, redaction at the door, durability across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from avatar.store import MIGRATIONS, SCHEMA_VERSION, DuplicateOperator, StageRow, Store, StoreError, Utterance


def test_utterances_events_and_accounts_round_trip(tmp_path: Path) -> None:
    with Store.in_data_dir(tmp_path) as store:
        ids = [
            store.add_utterance(Utterance("s1", "customer", "Hello", 10.0, 10.0, customer_id="c9")).result(),
            store.add_utterance(Utterance("s1", "ai", "Hi, how can I help?", 10.5, 12.0)).result(),
            store.add_utterance(Utterance("s1", "alice", "I can take it from here", 13.0, 14.0, interrupted=True)).result(),
            store.add_utterance(Utterance("s2", "customer", "Other session", 1.0, 1.0)).result(),
        ]
        assert ids == sorted(ids)
        store.add_event("takeover", "s1", "alice", {"cut": "Hi, how"}).result()
        store.add_operator("alice", "scrypt$hash").result()
        with pytest.raises(DuplicateOperator):
            store.add_operator("alice", "other").result()

        rows = store.transcript("s1")
        assert [(u.speaker, u.text, u.interrupted) for u in rows] == [
            ("customer", "Hello", False),
            ("ai", "Hi, how can I help?", False),
            ("alice", "I can take it from here", True),
        ]
        assert rows[0].customer_id == "c9"
        assert store.customer_sessions("c9") == ["s1"]
        [event] = store.events("s1")
        assert (event.kind, event.operator, event.detail) == ("takeover", "alice", {"cut": "Hi, how"})
        assert [o.name for o in store.operators()] == ["alice"]
        assert store.remove_operator("alice").result() is True
        assert store.remove_operator("alice").result() is False
    with pytest.raises(StoreError):
        store.add_event("login").result()


def test_wal_mode_schema_version_and_reopen(tmp_path: Path) -> None:
    with Store.in_data_dir(tmp_path) as store:
        store.add_utterance(Utterance("s1", "customer", "kept", 1.0, 1.0)).result()
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer version"):
        Store.in_data_dir(tmp_path)


def test_a_version_1_file_upgrades_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    # A store written before broadcast stages were kept: schema 1, with rows in every table.
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    conn.executescript(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO operators (name, password_hash, created) VALUES ('olga', 'scrypt$h', 5.0)")
    conn.execute(
        "INSERT INTO utterances (session_id, speaker, text, started, ended) VALUES ('s1', 'ai', 'Welcome back', 1.0, 2.0)"
    )
    conn.execute("INSERT INTO events (at, kind, session_id, operator) VALUES (3.0, 'takeover', 's1', 'olga')")
    conn.commit()
    conn.close()

    with Store.in_data_dir(tmp_path) as store:
        assert [o.name for o in store.operators()] == ["olga"]
        assert [u.text for u in store.transcript("s1")] == ["Welcome back"]
        assert [(e.kind, e.operator) for e in store.events("s1")] == [("takeover", "olga")]
        assert store.live_stages() == []
        store.add_stage(StageRow("st1", "leo", "script", "key-1", 10.0)).result()
        store.add_stage(StageRow("st2", "mia", "brain", "key-2", 11.0)).result()
        assert store.end_stage("st1", at=12.0).result() is True
        assert store.end_stage("st1").result() is False  # already ended: the first end time stays
        assert store.end_stage("unknown").result() is False
        assert [s.id for s in store.live_stages()] == ["st2"]
        assert store.stage("st1") == StageRow("st1", "leo", "script", "key-1", 10.0, 12.0)
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    conn.close()
    with Store.in_data_dir(tmp_path) as store:  # reopening at the current version changes nothing
        assert [s.id for s in store.live_stages()] == ["st2"] and [o.name for o in store.operators()] == ["olga"]


def test_nothing_stored_holds_card_id_or_phone_numbers(tmp_path: Path) -> None:
    card = "4111 1111 1111 1111"
    cn_id = "11010519491231002X"
    phone = "13812345678"
    with Store.in_data_dir(tmp_path) as store:
        store.add_utterance(Utterance("s1", "customer", f"my card is {card} and my id {cn_id}", 1.0, 1.0)).result()
        store.add_utterance(Utterance("s1", "customer", f"call me on {phone}, mail a.b@example.com", 2.0, 2.0)).result()
        store.add_event("handoff_request", "s1", None, {"reason": f"customer gave {phone}"}).result()
        texts = [u.text for u in store.transcript("s1")]
        detail = store.events("s1")[0].detail
    raw = (tmp_path / "store.sqlite3").read_bytes() + (tmp_path / "store.sqlite3-wal").read_bytes() if (
        tmp_path / "store.sqlite3-wal"
    ).exists() else (tmp_path / "store.sqlite3").read_bytes()
    for secret in (card, cn_id, phone, "a.b@example.com", "4111111111111111"):
        assert secret not in " ".join(texts)
        assert secret.encode() not in raw
    assert "my card is" in texts[0]
    assert detail is not None and phone not in detail["reason"]


def test_one_bad_write_fails_alone(tmp_path: Path) -> None:
    with Store.in_data_dir(tmp_path) as store:
        good = store.add_utterance(Utterance("s1", "customer", "fine", 1.0, 1.0))
        dup1 = store.add_operator("bob", "h")
        dup2 = store.add_operator("bob", "h")
        later = store.add_utterance(Utterance("s1", "ai", "also fine", 2.0, 2.0))
        assert good.result() and later.result()
        assert dup1.result() is None
        with pytest.raises(DuplicateOperator):
            dup2.result()
        assert len(store.transcript("s1")) == 2
