"""The store: transcripts, audit events and operator accounts in one SQLite file.

``<data_dir>/store.sqlite3`` in WAL mode. Every write goes through one writer thread in the
order it was submitted; ``add_*`` return a ``concurrent.futures.Future`` that resolves once
the row is committed, so a caller that awaits it (``await asyncio.wrap_future(fut)``) before
answering an HTTP request never acknowledges something a crash could lose.

Durability: ``synchronous=FULL``. With WAL, ``NORMAL`` already survives a killed process
(a commit is in the OS page cache the moment ``COMMIT`` returns) but may roll back the last
commits on a power cut or kernel crash; an audit trail for a bank must survive those too.
The price is one fsync per commit, paid on the writer thread (never on the event loop) and
amortised by committing every write that queued up meanwhile in one transaction.

Nothing stored holds an unredacted card, ID or phone number: utterance text and event
details pass through ``avatar.brain.compliance.redact`` here, at the one door into the file.

Broadcast stages (``stages``) are kept with their view key as given out: the key has to be
handed back unchanged to the OBS sources that hold it when the server brings the stage back.

The schema is versioned with ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes version i to i+1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avatar.brain.compliance import redact

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite3"
BATCH_LIMIT = 256  # writes committed together at most (bounds one transaction's size)

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1
    """
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE utterances (
        id INTEGER PRIMARY KEY,
        session_id TEXT NOT NULL,
        customer_id TEXT,
        speaker TEXT NOT NULL,
        text TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        interrupted INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX utterances_session ON utterances (session_id, id);
    CREATE INDEX utterances_customer ON utterances (customer_id, started);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        session_id TEXT,
        operator TEXT,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_session ON events (session_id, id);
    """,
    # 1 -> 2: broadcast stages, so that a restarted server brings back the ones still on air
    """
    CREATE TABLE stages (
        id TEXT PRIMARY KEY,
        avatar TEXT NOT NULL,
        driver TEXT NOT NULL,
        view_key TEXT NOT NULL,
        created REAL NOT NULL,
        ended REAL
    );
    CREATE INDEX stages_live ON stages (ended, created);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# Event kinds written by the server (the column is free text so integrations may add more).
EVENT_KINDS = ("login", "login_failed", "logout", "takeover", "handback", "handoff_request", "grace_expired")


class StoreError(Exception):
    """The store cannot be used (newer schema, unwritable file, closed)."""


class DuplicateOperator(StoreError):
    """An operator with that name already exists."""


@dataclass(frozen=True)
class Utterance:
    session_id: str
    speaker: str  # "customer", "ai", or the operator's name
    text: str
    started: float  # epoch seconds
    ended: float
    interrupted: bool = False
    customer_id: str | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "session_id": self.session_id,
            "customer_id": self.customer_id,
            "speaker": self.speaker,
            "text": self.text,
            "started": self.started,
            "ended": self.ended,
            "interrupted": self.interrupted,
        }


@dataclass(frozen=True)
class Event:
    kind: str
    at: float
    session_id: str | None = None
    operator: str | None = None
    detail: dict[str, Any] | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "at": self.at,
            "session_id": self.session_id,
            "operator": self.operator,
            "detail": self.detail or {},
        }


@dataclass(frozen=True)
class StageRow:
    """A broadcast stage as stored; ``ended`` is None while it is on air (or was, when the server
    stopped: such a stage comes back on the next start)."""

    id: str
    avatar: str
    driver: str
    view_key: str
    created: float
    ended: float | None = None


@dataclass(frozen=True)
class OperatorRecord:
    name: str
    password_hash: str
    created: float


def _redact_detail(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_detail(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_detail(v) for v in value]
    return value


Write = Callable[[sqlite3.Connection], Any]


class Store:
    """The SQLite store. Thread-safe; reads run on the caller's thread (WAL readers never
    block the writer), writes on the store's writer thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer_conn = self._connect()
            self._migrate(self._writer_conn)
            self._reader_conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path}: {exc}") from exc
        self._read_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Write, Future[Any]] | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="store-writer", daemon=True)
        self._thread.start()

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Store:
        return cls(Path(data_dir) / STORE_FILE)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store was written by a newer version (schema {version}, this one knows {SCHEMA_VERSION})"
            )
        for target in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- the writer ------------------------------------------------------------------------
    def _submit(self, write: Write) -> Future[Any]:
        future: Future[Any] = Future()
        if self._closed:
            future.set_exception(StoreError("the store is closed"))
            return future
        self._queue.put((write, future))
        return future

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every write submitted so far is committed (reads after this see them).
        Writes are applied in order by one thread, so an empty write marks the point."""
        self._submit(lambda conn: None).result(timeout)

    def _write_loop(self) -> None:
        conn = self._writer_conn
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            stop = False
            while len(batch) < BATCH_LIMIT:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._commit_batch(conn, batch)
            if stop:
                break
        conn.close()

    @staticmethod
    def _commit_batch(conn: sqlite3.Connection, batch: list[tuple[Write, Future[Any]]]) -> None:
        """Commit ``batch`` in one transaction; when that fails, commit each write alone so one
        bad write fails only its own caller."""
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [write(conn) for write, _ in batch]
            conn.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if len(batch) > 1:
                for item in batch:
                    Store._commit_batch(conn, [item])
                return
            if not isinstance(exc, StoreError):
                log.error("store write failed: %s", exc)
                exc = StoreError(f"store write failed: {exc}")
            batch[0][1].set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            future.set_result(result)

    def close(self) -> None:
        """Commit what is queued, then close. Later writes fail with ``StoreError``."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        with self._read_lock:
            self._reader_conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes ----------------------------------------------------------------------------
    def add_utterance(self, u: Utterance) -> Future[int]:
        """Store one utterance (its text redacted). Resolves to the row id once committed."""
        text = redact(u.text)

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO utterances (session_id, customer_id, speaker, text, started, ended, interrupted)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (u.session_id, u.customer_id, u.speaker, text, u.started, u.ended, int(u.interrupted)),
            )
            return int(cur.lastrowid or 0)

        return self._submit(write)

    def add_event(
        self,
        kind: str,
        session_id: str | None = None,
        operator: str | None = None,
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> Future[int]:
        """Store one audit event (string details redacted). Resolves to the row id once committed."""
        when = time.time() if at is None else at
        payload = json.dumps(_redact_detail(detail or {}), ensure_ascii=False)

        def write(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO events (at, kind, session_id, operator, detail) VALUES (?, ?, ?, ?, ?)",
                (when, kind, session_id, operator, payload),
            )
            return int(cur.lastrowid or 0)

        return self._submit(write)

    def add_operator(self, name: str, password_hash: str) -> Future[None]:
        """Create an account; the future raises ``DuplicateOperator`` when the name is taken."""

        def write(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO operators (name, password_hash, created) VALUES (?, ?, ?)",
                    (name, password_hash, time.time()),
                )
            except sqlite3.IntegrityError as exc:
                raise DuplicateOperator(f"operator {name!r} already exists") from exc

        return self._submit(write)

    def remove_operator(self, name: str) -> Future[bool]:
        """Delete an account; resolves to whether it existed."""

        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount > 0

        return self._submit(write)

    def add_stage(self, row: StageRow) -> Future[None]:
        """Record a broadcast stage as on air."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO stages (id, avatar, driver, view_key, created, ended) VALUES (?, ?, ?, ?, ?, ?)",
                (row.id, row.avatar, row.driver, row.view_key, row.created, row.ended),
            )

        return self._submit(write)

    def end_stage(self, stage_id: str, at: float | None = None) -> Future[bool]:
        """Mark a stage ended (it will not come back); resolves to whether it was on air."""
        when = time.time() if at is None else at

        def write(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE stages SET ended = ? WHERE id = ? AND ended IS NULL", (when, stage_id))
            return cur.rowcount > 0

        return self._submit(write)

    # -- reads -----------------------------------------------------------------------------
    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._closed:
                raise StoreError("the store is closed")
            return list(self._reader_conn.execute(sql, args).fetchall())

    def operator(self, name: str) -> OperatorRecord | None:
        rows = self._read("SELECT name, password_hash, created FROM operators WHERE name = ?", (name,))
        return OperatorRecord(*rows[0]) if rows else None

    def operators(self) -> list[OperatorRecord]:
        return [OperatorRecord(*r) for r in self._read("SELECT name, password_hash, created FROM operators ORDER BY name")]

    def transcript(self, session_id: str) -> list[Utterance]:
        """A session's utterances in the order they were stored."""
        rows = self._read(
            "SELECT session_id, speaker, text, started, ended, interrupted, customer_id, id"
            " FROM utterances WHERE session_id = ? ORDER BY id",
            (session_id,),
        )
        return [Utterance(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7]) for r in rows]

    def events(self, session_id: str | None = None, kind: str | None = None) -> list[Event]:
        sql = "SELECT kind, at, session_id, operator, detail, id FROM events"
        clauses: list[str] = []
        args: list[Any] = []
        if session_id is not None:
            clauses.append("session_id = ?")
            args.append(session_id)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._read(sql + " ORDER BY id", tuple(args))
        return [Event(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def customer_sessions(self, customer_id: str, limit: int = 20) -> list[str]:
        """The customer's earlier sessions, most recent first (for the operator's history view)."""
        rows = self._read(
            "SELECT session_id, MAX(started) AS last FROM utterances WHERE customer_id = ?"
            " GROUP BY session_id ORDER BY last DESC LIMIT ?",
            (customer_id, limit),
        )
        return [r[0] for r in rows]

    def live_stages(self) -> list[StageRow]:
        """The stages not ended, oldest first."""
        rows = self._read(
            "SELECT id, avatar, driver, view_key, created, ended FROM stages WHERE ended IS NULL ORDER BY created, id"
        )
        return [StageRow(*r) for r in rows]

    def stage(self, stage_id: str) -> StageRow | None:
        rows = self._read("SELECT id, avatar, driver, view_key, created, ended FROM stages WHERE id = ?", (stage_id,))
        return StageRow(*rows[0]) if rows else None

    def session_known(self, session_id: str) -> bool:
        rows = self._read(
            "SELECT 1 FROM utterances WHERE session_id = ? UNION ALL SELECT 1 FROM events WHERE session_id = ? LIMIT 1",
            (session_id, session_id),
        )
        return bool(rows)
