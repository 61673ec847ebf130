"""GET /metrics from a real app (real aiortc customer, real stage and TTS), parsed with the
Prometheus text parser: the values move after a session speaks; auth; one registry per app;
and the reply-latency observer on a fake clock."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from avatar.metrics import SPEECH_END, Metrics, SessionObserver, bounded_label
from avatar.server.app import SESSIONS
from avatar.server.engines import Engines
from tests.conftest import make_settings
from tests.test_listener import clip, make_rig, silence
from tests.test_operator_api import sign_in, wait_until
from tests.test_server import connect


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, keyed by (sample name, sorted labels)."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


async def scrape(client: TestClient, auth: dict[str, str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:  # type: ignore[type-arg]
    resp = await client.get("/metrics", headers=auth)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return samples(await resp.text())


async def test_metrics_move_after_a_session_speaks(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    before = await scrape(client, auth)
    assert before[("avatar_frames_sent_total", (("kind", "video"),))] == 0
    assert sum(v for (name, _), v in before.items() if name == "avatar_sessions") == 0

    customer, sid = await connect(client)
    try:
        customer.send({"type": "text", "text": "Hello there"})  # the echo driver says it back
        await customer.wait_for_event(lambda e: e["type"] == "caption")
        customer.send({"type": "no-such-type"})  # an error event back to the customer
        await customer.wait_for_event(lambda e: e["type"] == "error")
        client.app[SESSIONS].sessions[sid].request_handoff("customer_request")
        client.app[SESSIONS].sessions[sid].request_handoff("Mr Smith wants a person")  # free text
        alice = await sign_in(client, "alice")
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200  # already held
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        await wait_until(lambda: len(customer.got.video_pts) > 5 and len(customer.got.audio_pts) > 5)

        live = await scrape(client, auth)
        assert sum(v for (name, _), v in live.items() if name == "avatar_sessions") == 1
        assert live[("avatar_sessions_started_total", (("mode", "call"),))] == 1
        assert live[("avatar_frames_sent_total", (("kind", "video"),))] > 0
        assert live[("avatar_frames_sent_total", (("kind", "audio"),))] > 0
        assert ("avatar_frames_late_total", ()) in live
        assert abs(live[("avatar_av_offset_seconds", ())]) < 1.0
        assert live[("avatar_reply_latency_seconds_count", (("start", "text"),))] == 1
        assert live[("avatar_reply_latency_seconds_sum", (("start", "text"),))] > 0
        assert live[("avatar_errors_total", (("kind", "customer_event"),))] >= 1
        assert live[("avatar_handoffs_total", (("reason", "customer_request"),))] == 1
        assert live[("avatar_handoffs_total", (("reason", "other"),))] == 1  # free text never becomes a label
        assert live[("avatar_takeovers_total", ())] == 1
        assert live[("avatar_handbacks_total", ())] == 1
        video_live = live[("avatar_frames_sent_total", (("kind", "video"),))]
        assert (await client.delete(f"/api/sessions/{sid}", headers=auth)).status == 200
    finally:
        await customer.close()
    after = await scrape(client, auth)
    # A counter never goes down: an ended session's frames stay counted.
    assert after[("avatar_frames_sent_total", (("kind", "video"),))] >= video_live
    assert sum(v for (name, _), v in after.items() if name == "avatar_sessions") == 0


async def test_metrics_need_the_api_token_unless_open(
    aiohttp_client: Any, engines: Engines, tmp_path: Path, client: TestClient  # type: ignore[type-arg]
) -> None:
    assert (await client.get("/metrics")).status == 401
    bad = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert bad.status == 401 and "error" in await bad.json()

    from avatar.server.app import create_app

    open_app = create_app(make_settings(tmp_path / "open", metrics_auth="none"), engines=engines)
    other = await aiohttp_client(open_app)
    resp = await other.get("/metrics")
    assert resp.status == 200
    families = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert {
        "avatar_sessions", "avatar_frames_sent", "avatar_frames_late", "avatar_av_offset_seconds",
        "avatar_reply_latency_seconds", "avatar_handoffs", "avatar_takeovers", "avatar_handbacks",
        "avatar_errors", "avatar_stage_viewers", "avatar_sessions_started",
    } <= families


async def test_viewers_per_broadcast_stage(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    resp = await client.post("/api/stages", json={"avatar": "anna", "driver": "script"}, headers=auth)
    assert resp.status in (200, 201), await resp.text()
    stage_id = (await resp.json())["stage_id"]
    live = await scrape(client, auth)
    assert live[("avatar_stage_viewers", (("stage", stage_id),))] == 0
    assert live[("avatar_sessions_started_total", (("mode", "broadcast"),))] == 1


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.error("internal")
    assert b"avatar_errors_total{kind=\"internal\"} 1.0" in a.expose()
    assert b"kind=\"internal\"" not in b.expose()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def time(self) -> float:
        return self.now


class FakeSession:
    def __init__(self, clock: FakeClock) -> None:
        self.stage = type("Stage", (), {"clock": clock})()


def test_reply_latency_from_text_and_from_the_end_of_speech() -> None:
    metrics, clock = Metrics(), FakeClock()
    observer = SessionObserver(metrics, FakeSession(clock))
    # A typed line: answered 0.4 s later.
    observer({"type": "transcript", "speaker": "customer", "text": "hi", "final": True})
    clock.now += 0.4
    observer({"type": "caption", "text": "hello"})
    clock.now += 0.3
    observer({"type": "caption", "text": "second sentence: not a new reply"})
    # A spoken line: the speech ended at 101.0, recognised at 101.5, first audio at 102.2. The
    # listener sets SPEECH_END in the task that hands the turn over; a context keeps it there.
    import contextvars

    def spoken() -> None:
        SPEECH_END.set(101.0)
        clock.now = 101.5
        observer({"type": "transcript", "speaker": "customer", "text": "hi", "final": True})

    contextvars.copy_context().run(spoken)
    assert SPEECH_END.get() is None  # nothing leaked out of that task's context
    clock.now = 102.2
    observer({"type": "caption", "text": "hello"})
    observer({"type": "transcript", "speaker": "customer", "text": "partial", "final": False})

    got = samples(metrics.expose().decode())
    assert got[("avatar_reply_latency_seconds_count", (("start", "text"),))] == 2
    assert abs(got[("avatar_reply_latency_seconds_sum", (("start", "text"),))] - (0.4 + 0.7)) < 1e-9
    assert got[("avatar_reply_latency_seconds_count", (("start", "speech_end"),))] == 1
    assert abs(got[("avatar_reply_latency_seconds_sum", (("start", "speech_end"),))] - 1.2) < 1e-9


def test_bounded_labels() -> None:
    assert bounded_label("negative_emotion") == "negative_emotion"
    assert bounded_label("Alice asked for a person") == "other"
    assert bounded_label("x" * 40) == "other"
    assert bounded_label(None) == "other"


README = Path(__file__).resolve().parents[1] / "README.md"


async def test_the_readme_documents_every_metric(aiohttp_client: Any, engines: Engines, tmp_path: Path) -> None:
    from avatar.server.app import create_app

    app = create_app(make_settings(tmp_path, metrics_auth="none"), engines=engines)
    client = await aiohttp_client(app)
    families = text_string_to_metric_families(await (await client.get("/metrics")).text())
    # prometheus_client's standard "<counter>_created" timestamps are not metrics of their own.
    exposed = {f.name for f in families if not f.name.endswith("_created")}
    readme = README.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(avatar_[a-z_]+)` \|", readme, flags=re.MULTILINE))
    # The parser names counters without their _total suffix.
    documented = {name.removesuffix("_total") for name in documented}
    assert exposed == documented


async def test_spoken_turn_latency_through_the_real_listener(engines: Engines) -> None:
    """A spoken question through the real listener (Silero VAD, Whisper, fake media clock): the
    end of speech -> first audio histogram gets one observation, longer than text -> first audio
    by at least the end-of-turn wait."""
    import numpy as np

    metrics = Metrics()
    rig = make_rig(engines.vad(), engines.recognizer(), answer=lambda text: "Sure, let me help with that.")
    rig.session.add_sink(SessionObserver(metrics, rig.session))
    try:
        await rig.play(np.concatenate([silence(0.5), clip("activate_card"), silence(2.5)]))
        assert len(rig.driver.texts) == 1
        assert any(e["type"] == "caption" for e in rig.events)
    finally:
        await rig.close()
    got = samples(metrics.expose().decode())
    assert got[("avatar_reply_latency_seconds_count", (("start", "speech_end"),))] == 1
    assert got[("avatar_reply_latency_seconds_count", (("start", "text"),))] == 1
    from_speech = got[("avatar_reply_latency_seconds_sum", (("start", "speech_end"),))]
    from_text = got[("avatar_reply_latency_seconds_sum", (("start", "text"),))]
    turn = rig.turns[0]
    assert from_speech >= from_text + (turn.decided_at - turn.speech_end) - 1e-6
    assert from_speech < 3.0
