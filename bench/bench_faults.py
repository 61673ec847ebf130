"""Fault benchmark: break things in the middle of a call and report what was lost.

    .venv/bin/python bench/bench_faults.py [--case network|browser|redis ...] [--no-write]

Three faults, each against real ``avatar serve`` processes (echo driver) and real peers:

* ``network``: a customer's network dies while the avatar is speaking to them. The aiortc
  customer's UDP sockets are closed under it (no DTLS close, no SCTP abort, no more STUN
  consent answers: to the server the customer just goes silent). Expected: the session ends
  by itself within ICE's consent timeout (aioice: 6 failed checks about 5 s apart), its
  transcript holds the customer's line and what the avatar said, marked interrupted, and no
  task is left behind.
* ``browser``: an operator's browser dies while they hold a session. A real Chromium (Debian's
  ``/usr/bin/chromium``, started here with a DevTools port, driven by Playwright over CDP) is
  signed in to ``/operator``, watches the session live, takes it over and types lines; then its
  whole process group gets SIGKILL while the avatar is saying the operator's line. The server
  runs with ``AVATAR_OPERATOR_GRACE=3``. Expected: 3 s later the session is the AI's again,
  which answers the customer's next line; every line the page got a 200 for is in the audit
  trail; the operator's live-view peer is closed (ICE consent) and no task is left behind.
* ``redis``: two server processes share a ``redis-server`` (started here on a free port,
  no persistence); the customer is on A, the operator signed in to B (desk socket open)
  holds the session through B and speaks. Then Redis gets SIGKILL and is started again
  ``--outage`` seconds later (empty). During the outage the operator and the customer carry on:
  every request's status, error and time are recorded (target: clear 4xx/5xx JSON errors, no
  500s, no hangs). After the restart: how long until B routes to A again, then the operator
  speaks and hands back, and the AI answers the customer.

Acknowledged means: a line the server answered 200 for (``POST /api/sessions/{id}/say``), and
every line the customer typed that the server echoed back as a final transcript entry. Each is
looked for in the SQLite audit trail (``<data_dir>/store.sqlite3``, table ``utterances``) of the
process that owns the session, read directly from the file after the session has ended. Tasks
are ``avatar_asyncio_tasks`` from ``GET /metrics``, read after a warm-up session (before) and
once every session and peer of the case has ended (after).

Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:faults -->`` and ``<!-- /bench:faults -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._harness import (  # noqa: E402
    LOOPBACK,
    Customer,
    ServerProcess,
    asyncio_tasks,
    bounded,
    free_port,
    http_session,
    live_sessions,
    loopback_ice_only,
    machine_line,
    null_decoders,
)
from bench._report import write_section  # noqa: E402
from tests.e2e.conftest import CHROMIUM  # noqa: E402
from tests.e2e.conftest import CHROMIUM_FLAGS as E2E_CHROMIUM_FLAGS  # noqa: E402
from tests.rtc_client import cut_network  # noqa: E402

# The browser tests' Chromium and flags; started here by hand (to kill it), so headless is ours to set.
CHROMIUM_FLAGS = ["--headless=new", *E2E_CHROMIUM_FLAGS]
REDIS_SERVER = "/usr/bin/redis-server"
OPERATOR, PASSWORD = "alice", "fault-bench-password"
GRACE = 3.0
#: Long enough that the avatar is still saying it when the fault strikes and for a while after.
LONG_LINE = (
    "Thank you for waiting. I am going to read you the terms of your new savings account. "
    "The interest rate is variable and is paid every month into the account you choose. "
    "You may take money out at any time without a fee, up to six times a year. "
    "Statements are sent every quarter, and you can see every payment in the app at any time. "
    "If you close the account in the first year, the bonus interest is taken back. "
    "Please tell me if anything is unclear, and I will go through it again more slowly."
)


@dataclass
class Case:
    fault: str
    happened: list[str] = field(default_factory=list)
    acknowledged: list[tuple[str, str]] = field(default_factory=list)  # (speaker, text) the server acknowledged
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    tasks: list[tuple[str, int | None, int | None]] = field(default_factory=list)  # (process, before, after)
    failures: list[str] = field(default_factory=list)  # what missed the target besides losses
    details: list[str] = field(default_factory=list)  # longer notes under the table

    def note(self, text: str) -> None:
        self.happened.append(text)
        print(f"  [{self.fault}] {text}", flush=True)


# -- reading the servers ----------------------------------------------------------------------------
async def wait_until(predicate: Callable[[], Awaitable[bool]], within: float, step: float = 0.25) -> float | None:
    """Seconds until ``predicate`` held (polled every ``step``), or None after ``within``."""
    start = time.monotonic()
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() - start > within:
            return None
        await asyncio.sleep(step)


async def settle_tasks(http: aiohttp.ClientSession, server: ServerProcess, target: int | None, within: float) -> int | None:
    """Wait (at most ``within`` s) for the server's task count to come back to ``target``; return it."""
    count = await asyncio_tasks(http, server)
    deadline = time.monotonic() + within
    while target is not None and count is not None and count > target and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        count = await asyncio_tasks(http, server)
    return count


def audit_trail(data_dir: Path, session_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A session's rows in the server's SQLite store, read from the file (read-only)."""
    conn = sqlite3.connect(f"file:{data_dir / 'store.sqlite3'}?mode=ro", uri=True, timeout=10.0)
    try:
        utterances = [
            {"speaker": r[0], "text": r[1], "interrupted": bool(r[2])}
            for r in conn.execute(
                "SELECT speaker, text, interrupted FROM utterances WHERE session_id = ? ORDER BY id", (session_id,)
            )
        ]
        events = [
            {"kind": r[0], "operator": r[1], "detail": r[2]}
            for r in conn.execute("SELECT kind, operator, detail FROM events WHERE session_id = ? ORDER BY id",
                                  (session_id,))
        ]
    finally:
        conn.close()
    return utterances, events


async def flush_store(http: aiohttp.ClientSession, server: ServerProcess, session_id: str) -> None:
    """A barrier before reading the store's file: the transcript route waits until every write the
    server queued so far is committed (the store commits on its own thread, one fsync per batch)."""
    status, data, _ = await api(http, "GET", f"{server.url}/api/sessions/{session_id}/transcript", server.token)
    if status != 200:
        raise RuntimeError(f"GET transcript of {session_id} failed: {status} {error_of(data)}")


def store_errors(server: ServerProcess) -> list[str]:
    """Lines of the server's log about audit records it could not store."""
    return [line for line in server.log_tail(400).splitlines() if "audit record" in line or "store write" in line]


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (a cut line's heard text is its words joined)."""
    return re.findall(r"[\w']+", text.lower())


def check_acknowledged(case: Case, utterances: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Every acknowledged line must have a row: said whole, or cut and marked interrupted (its
    text then being the words heard, the first words of the line), or be named as not said in
    the ``link_lost`` event of a customer whose connection died (``avatar.rtc.link``)."""
    not_said = {
        text
        for e in events
        if e["kind"] == "link_lost"
        for text in (json.loads(e["detail"]) if isinstance(e["detail"], str) else e["detail"] or {}).get(
            "not_said", []
        )
    }
    for speaker, text in case.acknowledged:
        if speaker == "ai" and text in not_said:
            continue
        rows = [u for u in utterances if u["speaker"] == speaker]
        whole = any(u["text"] == text for u in rows)
        line = words(text)
        cut = any(u["interrupted"] and words(u["text"]) and line[: len(words(u["text"]))] == words(u["text"])
                  for u in rows)
        if not whole and not cut:
            case.lost.append(f"{speaker}: {text[:60]!r}")


def short(rows: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{u['speaker']}: {u['text'][:40]!r}{'…' if len(u['text']) > 40 else ''}"
        f"{' (interrupted)' if u['interrupted'] else ''}"
        for u in rows
    )


async def warm_up(http: aiohttp.ClientSession, server: ServerProcess) -> None:
    """One whole session first, so pools, caches and lazy imports exist before tasks are counted."""
    customer = Customer(codec="VP8")
    try:
        await customer.connect(http, server.url)
        since = time.monotonic()
        customer.send_text("Warming up.")
        await heard_whole(customer, "Warming up.", since, within=90.0)
    finally:
        await customer.close()
    await wait_until(lambda: _no_sessions(http, server), within=30.0)
    await asyncio.sleep(2.0)


async def _no_sessions(http: aiohttp.ClientSession, server: ServerProcess) -> bool:
    return await live_sessions(http, server) == 0


async def api(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None, limit: float = 20.0
) -> tuple[int, Any, float]:
    """(status, JSON body or text, seconds); status 0 with the exception's text when the request failed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    start = time.monotonic()
    try:
        async with http.request(method, url, headers=headers, json=body,
                                timeout=aiohttp.ClientTimeout(total=limit)) as resp:
            text = await resp.text()
            try:
                import json

                data: Any = json.loads(text)
            except ValueError:
                data = text
            return resp.status, data, time.monotonic() - start
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, f"{type(exc).__name__}: {exc}", time.monotonic() - start


def error_of(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("error", data.get("status", "")))[:90]
    return str(data)[:90]


class NotSeen(Exception):
    """An event the case waited for did not come."""


async def seen(customer: Customer, predicate: Callable[[dict[str, Any]], bool], what: str, within: float,
               since: float) -> float:
    """Wait for the customer's first event after ``since`` that matches; its arrival (monotonic).
    Raises ``NotSeen`` naming ``what`` (not a bare timeout, which ``bounded`` would take for its own)."""
    try:
        at, _ = await customer.wait_event(predicate, within, since)
    except TimeoutError:
        raise NotSeen(f"{what}: not seen within {within:g} s") from None
    return at


async def said(customer: Customer, text: str, since: float, within: float = 60.0) -> float:
    """Wait for the avatar's first caption of ``text`` (its first sentence, or ``text`` when that
    is a prefix of the caption); return its arrival (monotonic)."""

    def first_caption(e: dict[str, Any]) -> bool:
        caption = str(e.get("text", "")).strip()
        return e.get("type") == "caption" and bool(caption) and (text.startswith(caption) or caption.startswith(text))

    return await seen(customer, first_caption, f"the avatar's caption {text[:30]!r}", within, since)


async def heard_whole(customer: Customer, text: str, since: float, within: float = 60.0) -> float:
    """Wait for the avatar's final transcript of ``text`` (the line said to its end)."""
    return await seen(customer, lambda e: e.get("type") == "transcript" and e.get("speaker") == "avatar"
                      and e.get("text") == text, f"the end of the avatar's line {text[:30]!r}", within, since)


def add_operator(data_dir: Path) -> None:
    from avatar.operator.accounts import OperatorAccounts
    from avatar.store import Store

    with Store.in_data_dir(data_dir) as store:  # the server's store (WAL: shared with the running server)
        OperatorAccounts(store).add(OPERATOR, PASSWORD)


@contextlib.contextmanager
def log_on_failure(*servers: ServerProcess) -> Iterator[None]:
    """Print the servers' last log lines when the block fails (their logs go with their data dirs)."""
    try:
        yield
    except BaseException:
        for server in servers:
            print(f"--- {server.url} log:\n{server.log_tail(40)}", file=sys.stderr, flush=True)
        raise


# -- a: the customer's network dies -------------------------------------------------------------------
async def case_network() -> Case:
    case = Case("a. customer's network dies mid-utterance")
    with ServerProcess(max_sessions=8) as server, null_decoders(), log_on_failure(server):
        async with http_session() as http:
            await warm_up(http, server)
            before = await asyncio_tasks(http, server)
            customer = Customer(codec="VP8")
            sid = ""
            try:
                sid = await customer.connect(http, server.url)
                since = time.monotonic()
                customer.send_text("Hello, I would like to open a savings account.")
                await heard_whole(customer, "Hello, I would like to open a savings account.", since)
                case.acknowledged.append(("customer", "Hello, I would like to open a savings account."))
                case.acknowledged.append(("ai", "Hello, I would like to open a savings account."))
                since = time.monotonic()
                status, data, _ = await api(http, "POST", f"{server.url}/api/sessions/{sid}/say", server.token,
                                            {"text": LONG_LINE})
                if status != 200:
                    raise RuntimeError(f"say failed: {status} {data}")
                case.acknowledged.append(("ai", LONG_LINE))
                await said(customer, LONG_LINE, since)
                await asyncio.sleep(2.0)  # a few words in
                sockets = cut_network(customer.pc)
                cut_at = time.monotonic()
                captions = [str(e["text"]) for at, e in customer.events if e.get("type") == "caption" and at >= since]
                case.note(f"the avatar was {len(captions)} sentence(s) into a {len(LONG_LINE.split())}-word line "
                          f"when the customer's {sockets} UDP socket(s) were closed")
                # A line the integration sends after the customer vanished: acknowledged, queued.
                status, data, _ = await api(http, "POST", f"{server.url}/api/sessions/{sid}/say", server.token,
                                            {"text": "Is there anything else I can help you with?"})
                if status == 200:
                    case.acknowledged.append(("ai", "Is there anything else I can help you with?"))
                case.note(f"a second line sent by the API after the cut: {status} {error_of(data)}")
                ended = await wait_until(lambda: _no_sessions(http, server), within=90.0, step=0.5)
                if ended is None:
                    case.stuck.append(f"session {sid} still live 90 s after the network died")
                    case.note("the session was still live 90 s after the cut")
                else:
                    case.note(f"the server ended the session {time.monotonic() - cut_at:.0f} s after the cut "
                              f"(ICE consent expired)")
            finally:
                await customer.close()
            after = await settle_tasks(http, server, before, within=20.0)
            case.tasks.append(("server", before, after))
            await flush_store(http, server, sid)
            utterances, events = audit_trail(server.data_dir, sid)
            check_acknowledged(case, utterances, events)
            for event in (e for e in events if e["kind"] == "link_lost"):
                detail = json.loads(event["detail"]) if isinstance(event["detail"], str) else event["detail"] or {}
                case.note(
                    "the server took the customer's connection as lost (their receiver reports stopped), stopped "
                    f"the avatar and named {len(detail.get('not_said', []))} queued line(s) as not said in the "
                    "audit trail's link_lost event"
                )
            case.details += store_errors(server)
            long_rows = [u for u in utterances if LONG_LINE.startswith(u["text"]) and u["speaker"] == "ai"
                         and u["text"] and len(u["text"]) > 40]
            received = " ".join(captions)
            if long_rows:
                heard = long_rows[0]
                words = len(heard["text"].split())
                case.note(f"the long line is stored {'interrupted' if heard['interrupted'] else 'whole'} with "
                          f"{words} of {len(LONG_LINE.split())} words; the customer had received the captions "
                          f"of {len(captions)} sentence(s) ({len(received.split())} words) when the network died")
                if words > len(received.split()):
                    case.failures.append(
                        f"the audit trail says {words - len(received.split())} words were said that were played "
                        f"into the dead connection (the server keeps playing until ICE consent expires)"
                    )
            after_cut = [u for u in utterances if u["text"] == "Is there anything else I can help you with?"]
            if after_cut and not after_cut[0]["interrupted"]:
                case.note("the line sent after the cut is stored as said whole, to nobody")
            case.details.append(f"Stored: {short(utterances)}.")
            if await live_sessions(http, server):
                case.stuck.append("the server still counts a live session")
    return case


# -- b: the operator's browser dies ---------------------------------------------------------------------
def require(path: str, what: str) -> None:
    if not Path(path).exists():
        raise RuntimeError(f"{what} not found at {path}: run scripts/setup.sh --dev")


def devtools_port(profile: Path) -> int | None:
    """The DevTools port Chromium wrote into its profile (``--remote-debugging-port=0``), once it has."""
    try:
        return int(((profile / "DevToolsActivePort").read_text().split() or ["x"])[0])
    except (OSError, ValueError):
        return None


@contextlib.asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[tuple[Any, asyncio.subprocess.Process]]:
    """Debian's Chromium in its own process group with a DevTools port, and Playwright connected
    to it over CDP (so this benchmark owns the browser's pid and can kill it)."""
    from playwright.async_api import async_playwright

    require(CHROMIUM, "Chromium")
    profile = tmp / "profile"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *CHROMIUM_FLAGS, "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
        f"--user-data-dir={profile}", "about:blank",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    pw = await async_playwright().start()
    try:
        port = devtools_port(profile)
        for _ in range(300):
            if port is not None:
                break
            if proc.returncode is not None:
                raise RuntimeError(f"Chromium exited with {proc.returncode}")
            await asyncio.sleep(0.1)
            port = devtools_port(profile)
        if port is None:
            raise RuntimeError("Chromium did not open its DevTools port within 30 s")
        browser = await pw.chromium.connect_over_cdp(f"http://{LOOPBACK}:{port}")
        yield browser, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10.0)
        await pw.stop()


async def case_browser() -> Case:
    case = Case("b. operator's browser killed mid-takeover")
    env = {"AVATAR_OPERATOR_GRACE": str(GRACE)}
    with ServerProcess(max_sessions=8, env=env) as server, null_decoders(), log_on_failure(server), \
            tempfile.TemporaryDirectory(prefix="bench-faults-chromium-") as tmp:
        add_operator(server.data_dir)
        async with http_session() as http:
            await warm_up(http, server)
            before = await asyncio_tasks(http, server)
            customer = Customer(codec="VP8")
            sid = ""
            try:
                sid = await customer.connect(http, server.url)
                since = time.monotonic()
                customer.send_text("Hello, my card was declined at the shop.")
                await said(customer, "Hello, my card was declined", since)
                case.acknowledged += [("customer", "Hello, my card was declined at the shop."),
                                      ("ai", "Hello, my card was declined at the shop.")]
                async with chromium(Path(tmp)) as (browser, proc):
                    context = await browser.new_context(bypass_csp=True, viewport={"width": 1100, "height": 760})
                    page = await context.new_page()
                    await page.goto(server.url + "/operator")
                    await page.fill("#name", OPERATOR)
                    await page.fill("#password", PASSWORD)
                    await page.click("#signin-button")
                    await page.wait_for_function(
                        f"window.operatorPanel.connected && !!window.operatorPanel.sessions['{sid}']", timeout=30_000)
                    await page.click(f"li.card[data-session-id='{sid}']")
                    await page.wait_for_function(
                        "window.operatorPanel.watch && window.operatorPanel.watch.state === 'connected'",
                        timeout=30_000)
                    await page.click("#takeover")
                    await page.wait_for_function(f"window.operatorPanel.sessions['{sid}'].control === 'operator'",
                                                 timeout=30_000)
                    case.note("the operator signed in with Chromium, watched the call live and took it over")
                    for text in ("Hello, this is Alice from the bank. Let me look at your card.", LONG_LINE):
                        since = time.monotonic()
                        await page.fill("#say-text", text)
                        async with page.expect_response(lambda r: r.url.endswith(f"/api/sessions/{sid}/say")) as info:
                            await page.click("#say-send")
                        response = await info.value
                        if response.status == 200:
                            case.acknowledged.append((OPERATOR, text))
                        else:
                            case.failures.append(f"the page's say got {response.status}")
                        await said(customer, text, since)
                    await asyncio.sleep(2.0)  # the avatar is a few words into the operator's long line
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed = time.monotonic()
                    case.note(f"Chromium's process group got SIGKILL while the avatar was saying the operator's "
                              f"{len(LONG_LINE.split())}-word line")

                async def back_to_ai() -> bool:
                    status, data, _ = await api(http, "GET", f"{server.url}/api/sessions", server.token)
                    return status == 200 and any(s["session_id"] == sid and s["driver"] != "operator"
                                                 for s in data["sessions"])

                back = await wait_until(back_to_ai, within=60.0, step=0.1)
                if back is None:
                    case.failures.append("the session was not handed back to the AI within 60 s")
                    case.note("the session was still the operator's 60 s after the browser died")
                else:
                    case.note(f"the session went back to the AI {time.monotonic() - killed:.1f} s after the kill "
                              f"(grace {GRACE:g} s)")
                since = time.monotonic()
                customer.send_text("Are you still there?")
                try:
                    at = await said(customer, "Are you still there?", since, within=60.0)
                    case.acknowledged += [("customer", "Are you still there?"), ("ai", "Are you still there?")]
                    case.note(f"the AI answered the customer's next line ({at - since:.1f} s to its caption)")
                    await heard_whole(customer, "Are you still there?", since)
                except NotSeen:
                    case.failures.append("the AI did not answer the customer's next line")
                    case.note("the AI did not answer the customer's next line within 60 s")
            finally:
                await customer.close()
            ended = await wait_until(lambda: _no_sessions(http, server), within=30.0)
            if ended is None:
                case.stuck.append(f"session {sid} still live 30 s after the customer left")
            # The operator's live view (a WebRTC peer of the dead browser) ends by ICE consent.
            after = await settle_tasks(http, server, before, within=60.0)
            case.tasks.append(("server", before, after))
            await flush_store(http, server, sid)
            utterances, events = audit_trail(server.data_dir, sid)
            check_acknowledged(case, utterances, events)
            case.details += store_errors(server)
            kinds = [(e["kind"], e["detail"]) for e in events]
            case.note(f"audit events: {', '.join(k + (' ' + d if d not in ('{}', None) else '') for k, d in kinds)}")
            if not any(k == "handback" and "grace_expired" in d for k, d in kinds):
                case.failures.append("no handback event with reason grace_expired")
            long_rows = [u for u in utterances if u["speaker"] == OPERATOR and u["text"] == LONG_LINE]
            if long_rows:
                case.details.append("The operator's long line went on to its end after the handback (a handback "
                                    "does not cut what is being said), so the AI's answer came after it.")
            case.details.append(f"Stored: {short(utterances)}.")
    return case


# -- c: Redis restarts -------------------------------------------------------------------------------
class RedisServer:
    """A throw-away redis-server on a free port, no persistence (a restart comes back empty)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://{LOOPBACK}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        if not Path(REDIS_SERVER).exists():
            raise RuntimeError("redis-server not found: run scripts/setup.sh --dev")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            for _ in range(200):
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self.proc.poll() is not None:
                        break
                    time.sleep(0.05)
            raise RuntimeError("redis-server did not start")
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


async def case_redis(outage: float) -> Case:
    case = Case(f"c. Redis killed and restarted ({outage:g} s outage)")
    with tempfile.TemporaryDirectory(prefix="bench-faults-redis-") as tmp:
        redis_server = RedisServer(Path(tmp))
        redis_server.start()
        try:
            env = {"AVATAR_REDIS_URL": redis_server.url}
            with ServerProcess(max_sessions=8, env=env) as a, ServerProcess(max_sessions=8, env=env) as b, \
                    null_decoders(), log_on_failure(a, b):
                add_operator(b.data_dir)
                async with http_session() as http:
                    await warm_up(http, a)
                    before = {"A": await asyncio_tasks(http, a), "B": await asyncio_tasks(http, b)}
                    await run_redis_case(case, http, a, b, redis_server, outage)
                    after_a = await settle_tasks(http, a, before["A"], within=30.0)
                    after_b = await settle_tasks(http, b, before["B"], within=30.0)
                    case.tasks += [("A", before["A"], after_a), ("B", before["B"], after_b)]
                    if await live_sessions(http, a):
                        case.stuck.append("process A still counts a live session")
        finally:
            redis_server.kill()
    return case


async def run_redis_case(
    case: Case, http: aiohttp.ClientSession, a: ServerProcess, b: ServerProcess, redis_server: RedisServer,
    outage: float,
) -> None:
    customer = Customer(codec="VP8")
    sid = ""
    desk: aiohttp.ClientWebSocketResponse | None = None
    messages: list[dict[str, Any]] = []
    reader: asyncio.Task[None] | None = None
    try:
        sid = await customer.connect(http, a.url)
        since = time.monotonic()
        customer.send_text("Hello, I need to change my address.")
        # Said to its end before the takeover: a takeover cuts the AI, by design (not this fault).
        await heard_whole(customer, "Hello, I need to change my address.", since)
        case.acknowledged += [("customer", "Hello, I need to change my address."),
                              ("ai", "Hello, I need to change my address.")]
        status, data, _ = await api(http, "POST", f"{b.url}/api/operator/login", None,
                                    {"name": OPERATOR, "password": PASSWORD})
        if status != 200:
            raise RuntimeError(f"sign-in on B failed: {status} {data}")
        token = data["token"]

        async def listed_on_b() -> bool:
            status, data, _ = await api(http, "GET", f"{b.url}/api/operator/sessions", token)
            return status == 200 and any(s["session_id"] == sid for s in data["sessions"])

        if await wait_until(listed_on_b, within=30.0) is None:
            raise RuntimeError("B never listed A's session")
        desk = await http.ws_connect(f"{b.url}/api/operator/ws", headers={"Authorization": f"Bearer {token}"})

        async def read_desk(ws: aiohttp.ClientWebSocketResponse) -> None:
            import json

            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    messages.append(json.loads(msg.data))

        reader = asyncio.create_task(read_desk(desk))
        status, data, _ = await api(http, "POST", f"{b.url}/api/sessions/{sid}/takeover", token)
        if status != 200:
            raise RuntimeError(f"takeover through B failed: {status} {data}")
        line = "This is Alice, I can help you with your address."
        since = time.monotonic()
        status, data, _ = await api(http, "POST", f"{b.url}/api/sessions/{sid}/say", token, {"text": line})
        if status != 200:
            raise RuntimeError(f"say through B failed: {status} {data}")
        case.acknowledged.append((OPERATOR, line))
        await said(customer, line, since)
        case.note("customer on A, operator signed in to B (desk socket open) took the session over and spoke")

        # -- the outage ---------------------------------------------------------------------------------
        redis_server.kill()
        killed = time.monotonic()
        case.note(f"redis-server got SIGKILL; restarted {outage:g} s later, empty")
        outage_rows: list[str] = []
        outage_token: str | None = None

        async def attempt(what: str, method: str, url: str, tok: str | None, body: Any = None,
                          ack: tuple[str, str] | None = None) -> tuple[int, Any]:
            status, data, took = await api(http, method, url, tok, body)
            if status == 200 and ack is not None:
                case.acknowledged.append(ack)
            if (status >= 500 and status != 503) or status == 0:
                case.failures.append(f"during the outage, {what}: {status or 'no answer'} {error_of(data)}")
            if took > 10.0:
                case.failures.append(f"during the outage, {what} took {took:.1f} s")
            outage_rows.append(f"{what}: **{status or 'no answer'}** in {took:.2f} s"
                               f"{' (' + error_of(data) + ')' if status != 200 else ''}")
            return status, data

        await asyncio.sleep(0.5)
        n = 0
        while time.monotonic() - killed < outage:
            n += 1
            text = f"Alice again, during the outage, line {n}."
            await attempt(f"operator says a line through B (#{n})", "POST", f"{b.url}/api/sessions/{sid}/say",
                          token, {"text": text}, ack=(OPERATOR, text))
            text = f"Alice on A directly, line {n}."
            await attempt(f"operator says a line on A, the owner (#{n})", "POST",
                          f"{a.url}/api/sessions/{sid}/say", token, {"text": text}, ack=(OPERATOR, text))
            if n == 1:
                status, data = await attempt("operator's session list on B", "GET",
                                             f"{b.url}/api/operator/sessions", token)
                if status == 200:
                    marked = (f"saying: {data['partial']!r}" if data.get("partial")
                              else "with nothing saying it was partial")
                    outage_rows.append(f"(that list held {len(data['sessions'])} of the 1 live session(s) and "
                                       f"{len(data['held'])} held, {marked})")
                    if not data["sessions"] and not data.get("partial"):
                        case.failures.append("during the outage B's session list was empty with a 200 and nothing "
                                             "saying it was partial (the desk shows no calls)")
                status, data = await attempt("a new sign-in on B", "POST", f"{b.url}/api/operator/login", None,
                                             {"name": OPERATOR, "password": PASSWORD})
                if status == 200:
                    outage_token = str(data["token"])
                status, data = await attempt("transcript through B", "GET",
                                             f"{b.url}/api/sessions/{sid}/transcript", token)
                if status == 404:
                    case.failures.append("during the outage the transcript through B was a 404 'no session' (the "
                                         "session was live on A): a misleading error, not a 503")
                await attempt("API token says a line on A", "POST", f"{a.url}/api/sessions/{sid}/say", a.token,
                              {"text": "A line from the integration during the outage."},
                              ack=("ai", "A line from the integration during the outage."))
                newcomer = Customer(codec="VP8")
                try:
                    started = time.monotonic()
                    await bounded(newcomer.connect(http, a.url), 20.0, "a new customer's call")
                    outage_rows.append(f"a new customer calls A: **connected** in {time.monotonic() - started:.2f} s")
                except Exception as exc:  # what a new caller meets during the outage is the finding
                    outage_rows.append(f"a new customer calls A: **failed** ({exc})")
                    case.failures.append(f"during the outage a new customer could not call A: {exc}")
                finally:
                    await newcomer.close()
                since = time.monotonic()
                customer.send_text("Hello? Is anyone there?")
                try:
                    await seen(customer, lambda e: e.get("type") == "transcript" and e.get("speaker") == "customer"
                               and e.get("text") == "Hello? Is anyone there?", "the customer's line", 10.0, since)
                    case.acknowledged.append(("customer", "Hello? Is anyone there?"))
                    outage_rows.append("the customer types a line on A: **recorded** (final transcript echoed)")
                except NotSeen:
                    outage_rows.append("the customer types a line on A: **no final transcript within 10 s**")
            await asyncio.sleep(1.0)
        redis_server.start()
        restarted = time.monotonic()
        case.details.append("During the outage: " + "; ".join(dict.fromkeys(outage_rows)) + ".")

        # -- recovery ------------------------------------------------------------------------------------
        async def routed_again() -> bool:
            status, data, _ = await api(http, "GET", f"{b.url}/api/operator/sessions", token, limit=5.0)
            return status == 200 and sid in data.get("held", [])

        back = await wait_until(routed_again, within=60.0, step=0.25)
        if back is None:
            case.failures.append("B did not list the session as held within 60 s of the restart")
            case.note("60 s after the restart B still did not show the session as held by the operator")
        else:
            case.note(f"B listed the session as held by the operator again {back:.1f} s after the restart")
        if outage_token is not None:
            # A sign-in answered 200 during the outage: is it still good once Redis is back?
            for name, server in (("B", b), ("A", a)):
                first: tuple[int, Any] | None = None
                start = time.monotonic()
                status = 0
                while time.monotonic() - start < 20.0:
                    status, data, _ = await api(http, "GET", f"{server.url}/api/operator/sessions", outage_token)
                    first = first or (status, data)
                    if status == 200:
                        break
                    await asyncio.sleep(0.5)
                assert first is not None
                waited = f", accepted {time.monotonic() - start:.1f} s later" if status == 200 and first[0] != 200 else ""
                case.note(f"the sign-in made during the outage, used on {name} after the restart: {first[0]}"
                          f"{' ' + error_of(first[1]) if first[0] != 200 else ''}{waited}")
                if status != 200:
                    case.lost.append(f"the sign-in acknowledged during the outage ({name}: {status} for 20 s)")
        grace = [m for m in messages if m.get("type") == "event" and m.get("kind") == "handback"]
        if grace:
            case.failures.append(f"the session was handed back during the outage ({grace[0].get('detail')})")
        line2 = "Thank you for waiting, your address is now changed."
        since = time.monotonic()
        status, data, took = await api(http, "POST", f"{b.url}/api/sessions/{sid}/say", token, {"text": line2})
        case.note(f"after the restart: the operator's line through B: {status} in {took:.2f} s")
        if status == 200:
            case.acknowledged.append((OPERATOR, line2))
            await said(customer, line2, since)
        else:
            case.failures.append(f"after the restart the operator's line through B got {status} {error_of(data)}")
        status, data, took = await api(http, "POST", f"{b.url}/api/sessions/{sid}/handback", token)
        case.note(f"handback through B: {status} in {took:.2f} s")
        if status != 200:
            case.failures.append(f"handback through B after the restart got {status} {error_of(data)}")
        since = time.monotonic()
        customer.send_text("Thanks, goodbye.")
        try:
            await said(customer, "Thanks, goodbye.", since, within=30.0)
            case.acknowledged += [("customer", "Thanks, goodbye."), ("ai", "Thanks, goodbye.")]
            case.note("the AI answered the customer's next line")
            await heard_whole(customer, "Thanks, goodbye.", since)
        except NotSeen:
            case.failures.append("the AI did not answer after the handback")
        case.note(f"{len([m for m in messages if m.get('type') == 'presence'])} presence and "
                  f"{len(messages)} desk messages in all; desk socket {'closed' if desk.closed else 'still open'} "
                  f"({time.monotonic() - restarted:.0f} s after the restart)")
    finally:
        await customer.close()
        if desk is not None:
            await desk.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def gone_everywhere() -> bool:
        status, data, _ = await api(http, "GET", f"{b.url}/api/operator/sessions", token, limit=5.0)
        return await live_sessions(http, a) == 0 and status == 200 and not data["sessions"]

    if await wait_until(gone_everywhere, within=30.0) is None:
        case.stuck.append("the session was still live on A or listed on B 30 s after the customer left")
    await flush_store(http, a, sid)
    utterances, events = audit_trail(a.data_dir, sid)
    check_acknowledged(case, utterances, events)
    case.details += store_errors(a)
    case.note(f"audit events on A: {', '.join(e['kind'] for e in events)}")
    case.details.append(f"Stored on A: {short(utterances)}.")


# -- the report -----------------------------------------------------------------------------------------
def section(cases: list[Case], command: str) -> str:
    def cell(items: list[str], empty: str) -> str:
        return "<br>".join(items) if items else empty

    rows = []
    for c in cases:
        tasks = "; ".join(f"{name} {b if b is not None else 'n/a'} → {a if a is not None else 'n/a'}"
                          for name, b, a in c.tasks)
        lost = f"{len(c.lost)} of {len(c.acknowledged)}" + (": " + "; ".join(c.lost) if c.lost else "")
        happened = cell(c.happened, "")
        if c.failures:
            happened += "<br>**missed:** " + "; ".join(c.failures)
        rows.append(f"| {c.fault} | {happened} | {lost} | {cell(c.stuck, '0')} | {tasks} |")
    details = "\n".join(f"- *{c.fault}*: " + " ".join(c.details) for c in cases if c.details)
    n_lost = sum(len(c.lost) for c in cases)
    n_acknowledged = sum(len(c.acknowledged) for c in cases)
    n_stuck = sum(len(c.stuck) for c in cases)
    leaked = [f"{c.fault.split('.')[0]} {name}" for c in cases for name, b, a in c.tasks
              if b is None or a is None or a > b]
    missed = [c.fault.split(".")[0] for c in cases if c.failures]
    summary = (
        f"**Acknowledged and lost: {n_lost} of {n_acknowledged}. Sessions stuck: {n_stuck}. Processes with more "
        f"asyncio tasks after than before: {', '.join(leaked) if leaked else 'none'}. Cases that missed another "
        f"part of the target (\"missed\" in the table): {', '.join(missed) if missed else 'none'}.**"
    )
    return f"""### Faults: what a broken network, browser or Redis loses

Command: `{command}` ({machine_line()}; several engineers share this 2-core machine).

Real `avatar serve` processes (echo driver) and real peers: aiortc customers, Debian's Chromium
for the operator, a real `redis-server`. *Acknowledged* lines are those the server answered 200
for (`POST /api/sessions/{{id}}/say`, from the API token or the operator's page) and the lines the
customer typed that came back as final transcript entries, with the avatar's echo of them; each
is looked for in the owner's SQLite audit trail (`utterances`), whole or marked interrupted with
the words heard. Tasks: `avatar_asyncio_tasks` after a warm-up session, and once the case's
sessions and peers had ended.

{summary}

| fault | what happened | acknowledged lost | sessions stuck | tasks before → after |
|---|---|---|---|---|
{chr(10).join(rows)}

{details}
"""


CASES: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, Case]]] = {
    "network": lambda args: case_network(),
    "browser": lambda args: case_browser(),
    "redis": lambda args: case_redis(args.outage),
}


async def run(args: argparse.Namespace) -> list[Case]:
    loopback_ice_only()
    cases: list[Case] = []
    for name in args.case:
        print(f"case {name}", flush=True)
        try:
            cases.append(await bounded(CASES[name](args), 400.0, f"the {name} case"))
        except Exception as exc:  # one broken case must not hide the others' results
            failed = Case(name)
            failed.failures.append(f"the case itself failed: {type(exc).__name__}: {exc}")
            cases.append(failed)
            print(f"  case {name} failed: {exc!r}", file=sys.stderr, flush=True)
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: all three, in order")
    parser.add_argument("--outage", type=float, default=8.0, help="seconds Redis stays down (default 8)")
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = parser.parse_args()
    if args.outage <= 0:
        print("bench_faults: --outage must be positive", file=sys.stderr)
        return 2
    args.case = args.case or list(CASES)
    cases = asyncio.run(run(args))
    command = ".venv/bin/python bench/bench_faults.py" + "".join(f" --case {c}" for c in args.case
                                                                if args.case != list(CASES))
    if args.outage != 8.0:
        command += f" --outage {args.outage:g}"
    body = section(cases, command)
    print(body)
    if not args.no_write:
        write_section("faults", body)
    missed = any(c.lost or c.stuck or c.failures for c in cases)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
