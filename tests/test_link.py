"""A customer who vanishes (their network dies) is not talked at: the avatar stops once their
receiver reports stop coming (``avatar.rtc.link``), and the audit trail keeps the line as heard
up to then, marked interrupted, long before ICE would notice (about 30 s)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from aiohttp.test_utils import TestClient

from avatar.clock import FakeClock
from avatar.rtc.link import last_report, watch_link
from avatar.server.app import SESSIONS
from avatar.server.operator_routes import OPERATORS
from avatar.session import EchoDriver, Session
from avatar.speaker import Speaker
from avatar.stage import Stage
from tests.rtc_client import RtcCustomer, cut_network
from tests.stage_fakes import PlainRenderer, RampMouth, StillFace, ToneSource

LONG_LINE = (
    "Thank you for waiting. I am going to read you the terms of your new savings account. "
    "The interest rate is variable and is paid every month into the account you choose. "
    "You may take money out at any time without a fee, up to six times a year. "
    "Statements are sent every quarter, and you can see every payment in the app at any time."
)


AFTER_CUT = "Is there anything else I can help you with?"


async def test_a_customer_whose_network_dies_is_not_talked_at(client: TestClient, auth: dict[str, str]) -> None:
    customer = RtcCustomer()  # no microphone: only its receiver reports say it is there
    resp = await client.post("/api/offer", json=await customer.offer())
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    await customer.accept(answer)
    sid = answer["session_id"]
    try:
        await asyncio.wait_for(customer.channel_open.wait(), 20)
        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": LONG_LINE}, headers=auth)
        assert resp.status == 200, await resp.text()
        await customer.wait_for_event(lambda e: e["type"] == "caption", within=30)
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        for _ in range(100):  # the customer's reports count once their pace is known (a second one)
            if session.heard_at is not None:
                break
            await asyncio.sleep(0.1)
        assert session.heard_at is not None, "no receiver reports from the customer"
        await asyncio.sleep(1.5)  # a few words in
        assert cut_network(customer.pc) > 0
        # Sent before the server can know: acknowledged and queued, then not said to nobody.
        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": AFTER_CUT}, headers=auth)
        assert resp.status == 200, await resp.text()
        loop = asyncio.get_running_loop()
        cut_at = loop.time()
        said: list[dict[str, Any]] = []
        while loop.time() - cut_at < 20 and not said:  # ICE would take about 30 s
            await asyncio.sleep(0.25)
            resp = await client.get(f"/api/sessions/{sid}/transcript", headers=auth)
            assert resp.status == 200
            said = [e for e in (await resp.json())["transcript"] if e["speaker"] == "ai"]
        assert said, "the line was still being said into the dead connection 20 s later"
        (line,) = said
        assert line["interrupted"]
        heard = line["text"].split()
        assert 0 < len(heard) < len(LONG_LINE.split()) // 2
        spoken = [w.strip(".,").lower() for w in LONG_LINE.split()]
        assert [w.lower() for w in heard] == spoken[: len(heard)]  # the words heard, in order
        # The audit trail says the connection was lost, and which acknowledged line was not said.
        store = client.app[OPERATORS].store
        store.flush()
        (event,) = store.events(sid, kind="link_lost")
        assert event.detail is not None and event.detail["not_said"] == [AFTER_CUT]
        assert event.detail["perhaps_unheard"] == []  # the line being said was cut back instead
        assert not any(e["text"] == AFTER_CUT for e in said)
        # A line sent now would go nowhere: refused, not recorded as said.
        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": "Are you there?"}, headers=auth)
        assert resp.status == 409 and "connection is lost" in await resp.text()
    finally:
        await customer.close()


class _Sender:
    def __init__(self, stamps: list[datetime.datetime]) -> None:
        self.track = object()
        self.stamps = stamps

    async def getStats(self) -> dict[str, Any]:
        return {
            str(i): SimpleNamespace(type="remote-inbound-rtp", timestamp=stamp) for i, stamp in enumerate(self.stamps)
        }


def fake_session(
    check_link: Callable[[float], None],
    customer_heard: Callable[[float], None] = lambda at: None,
    link_lost_at: float | None = None,
) -> Any:
    """What ``watch_link`` uses of a session, at stage-clock time 100 s."""
    return SimpleNamespace(
        stage=SimpleNamespace(clock=SimpleNamespace(time=lambda: 100.0)),
        link_timeout=3.0,
        link_lost_at=link_lost_at,
        customer_heard=customer_heard,
        check_link=check_link,
    )


async def watch_until(
    done: asyncio.Event, session: Any, pc: Any, utcnow: Callable[[], datetime.datetime]
) -> None:
    """Run ``watch_link`` (polling every 10 ms) until ``done`` is set."""
    task = asyncio.ensure_future(watch_link(session, pc, poll=0.01, utcnow=utcnow))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()


async def test_receiver_reports_tell_the_session_when_the_customer_was_last_heard_from() -> None:
    now = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.UTC)
    audio = _Sender([now - datetime.timedelta(seconds=4.0)])
    video = _Sender([now - datetime.timedelta(seconds=0.5)])
    pc = SimpleNamespace(getSenders=lambda: [audio, video, SimpleNamespace(track=None)])
    assert await last_report(pc) == now - datetime.timedelta(seconds=0.5)
    assert await last_report(SimpleNamespace(getSenders=lambda: [])) is None

    heard: list[float] = []
    checked: list[float] = []
    three = asyncio.Event()

    def check_link(at: float) -> None:
        checked.append(at)
        if len(checked) == 1:  # the next report: the customer's pace is known from the second on
            video.stamps = [now - datetime.timedelta(seconds=0.2)]
        if len(checked) >= 3:
            three.set()

    await watch_until(three, fake_session(check_link, heard.append), pc, lambda: now)
    # The latest report, placed on the stage clock, once (it did not change again); checked each
    # poll. The first report alone is not taken as heard: the pace of the reports is not known.
    assert heard == [99.8]
    assert checked[:3] == [100.0, 100.0, 100.0]


async def test_a_peer_that_reports_rarely_is_given_longer() -> None:
    """Chrome reports on audio only every 5 s: a customer whose reports come that seldom is not
    taken as gone between two of them (the timeout follows GAPS times their usual gap)."""
    start = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.UTC)
    audio = _Sender([start])
    pc = SimpleNamespace(getSenders=lambda: [audio])
    polls = asyncio.Event()
    count = 0

    def check_link(at: float) -> None:
        nonlocal count
        count += 1
        audio.stamps = [start + datetime.timedelta(seconds=5.0 * count)]  # the next report, 5 s on
        if count >= 6:
            polls.set()

    session = fake_session(check_link)
    await watch_until(polls, session, pc, lambda: start)
    assert session.link_timeout == 20.0


async def test_a_peer_that_reports_rarely_is_not_lost_before_its_second_report() -> None:
    """Before the customer's second report their pace is unknown: a peer reporting on audio only
    (every 5 s) is not taken as gone 3 s after its first report, cutting the avatar off; once
    its reports stop, the link is lost after four of its gaps and the line is kept as heard
    up to the last report."""
    fake = FakeClock()
    stage = Stage(PlainRenderer(), fake.media_clock(), StillFace())

    def speaker_factory(st: Stage, emit: Callable[[dict[str, Any]], None]) -> Speaker:
        return Speaker(st, ToneSource(seconds=40.0), lambda phonemes, duration, lang: RampMouth(duration), emit)

    session = Session(stage, speaker_factory, EchoDriver(), "test")
    session.start()
    clock = stage.clock
    start = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.UTC)
    reports = [1.0, 6.0, 11.0]  # stage-clock times of the customer's reports; then they stop
    seen: list[tuple[float, float | None]] = []  # (stage time, link_lost_at) at each poll
    done = asyncio.Event()

    class AudioOnly(_Sender):
        async def getStats(self) -> dict[str, Any]:
            fake.advance(0.5)  # each poll is 0.5 s of stage time
            seen.append((clock.time(), session.link_lost_at))
            if clock.time() >= 40.0:
                done.set()
            self.stamps = [start + datetime.timedelta(seconds=max(r for r in reports if r <= clock.time()))]
            return await super().getStats()

    audio = AudioOnly([])
    pc = SimpleNamespace(getSenders=lambda: [audio])
    line = session.say(" ".join(f"word{i}" for i in range(40)))  # one 40 s sentence, a word a second
    task = asyncio.ensure_future(
        watch_link(session, pc, poll=0.001, utcnow=lambda: start + datetime.timedelta(seconds=clock.time()))
    )
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        task.cancel()
    try:
        assert [at for at, lost in seen if lost is not None and at <= 31.0] == []
        assert session.link_lost_at == 11.0 and session.link_timeout == 20.0
        await asyncio.sleep(0.05)
        assert line.interrupted and not session.speaker.busy
        (entry,) = session.transcript
        assert entry.interrupted and 0 < len(entry.text.split()) <= 11
    finally:
        await session.close()


async def test_the_gap_across_an_outage_is_not_the_customers_pace() -> None:
    start = datetime.datetime(2026, 11, 21, 12, 0, 0, tzinfo=datetime.UTC)
    video = _Sender([start])
    pc = SimpleNamespace(getSenders=lambda: [video])
    polls = asyncio.Event()
    count = 0

    def check_link(at: float) -> None:
        nonlocal count
        count += 1
        video.stamps = [start + datetime.timedelta(seconds=30.0 * count)]  # back after 30 s away
        if count >= 4:
            polls.set()

    session = fake_session(check_link, link_lost_at=95.0)  # taken as lost meanwhile
    await watch_until(polls, session, pc, lambda: start)
    assert session.link_timeout == 3.0
