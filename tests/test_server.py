"""The server's HTTP API and a live WebRTC session with an in-process aiortc customer."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
from aiohttp.test_utils import TestClient

from tests.rtc_client import RtcCustomer


async def connect(client: TestClient, avatar: str | None = None) -> tuple[RtcCustomer, str]:  # type: ignore[type-arg]
    customer = RtcCustomer()
    body = await customer.offer()
    if avatar:
        body["avatar"] = avatar
    resp = await client.post("/api/offer", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    await customer.accept(answer)
    await asyncio.wait_for(customer.channel_open.wait(), 10)
    return customer, answer["session_id"]


async def test_healthz_and_page(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    page = await client.get("/")
    assert page.status == 200 and "<video" in await page.text()
    avatars = await (await client.get("/api/avatars")).json()
    names = {a["name"] for a in avatars["avatars"]}
    assert {"anna", "leo"} <= names


async def test_live_session_video_rate_audio_and_captions(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customer, session_id = await connect(client)
    try:
        listed = await (await client.get("/api/sessions", headers=auth)).json()
        assert [s["session_id"] for s in listed["sessions"]] == [session_id]

        await asyncio.sleep(1.0)
        # Silence while idle: frames flow, audio is all zero.
        assert customer.got.video_size == (512, 512)
        assert len(customer.got.audio_rms) > 10 and max(customer.got.audio_rms) < 1.0

        customer.send({"type": "text", "text": "Hello there. How are you today?"})
        caption = await customer.wait_for_event(lambda e: e["type"] == "caption")
        assert caption["text"].startswith("Hello there")
        assert caption["words"] and caption["words"][0]["text"].lower().startswith("hello")
        await customer.wait_for_event(lambda e: e == {"type": "state", "state": "speaking", "session_id": session_id})
        await asyncio.sleep(1.5)
        # The audio track carries the voice.
        assert max(customer.got.audio_rms) > 300

        # Video pts advance at the configured 25 fps on the 90 kHz clock.
        pts = np.array(customer.got.video_pts[-30:])
        steps = np.diff(pts)
        assert np.median(steps) == 90_000 // 25
        times = np.array(customer.got.video_times)
        rate = (len(times) - 1) / (times[-1] - times[0])
        assert 15 < rate < 35  # wall-clock receive rate around the configured 25 fps
    finally:
        await customer.close()


async def test_say_and_interrupt_api(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customer, session_id = await connect(client, avatar="leo")
    try:
        resp = await client.post(f"/api/sessions/{session_id}/say", json={"text": "Welcome to the bank. We are glad you are here. Let me explain our services in detail."}, headers=auth)
        assert resp.status == 200 and (await resp.json())["status"] == "queued"
        await customer.wait_for_event(lambda e: e["type"] == "caption")
        resp = await client.post(f"/api/sessions/{session_id}/interrupt", headers=auth)
        assert resp.status == 200
        body = await resp.json()
        assert body["status"] == "interrupted"
        await customer.wait_for_event(lambda e: e["type"] == "state" and e["state"] == "idle")
        # After the interruption the voice stops: give the cut 0.3 s, then the audio is silent.
        await asyncio.sleep(0.3)
        mark = len(customer.got.audio_rms)
        await asyncio.sleep(0.6)
        assert max(customer.got.audio_rms[mark:]) < 1.0

        # Speaking now with interrupt=True.
        resp = await client.post(f"/api/sessions/{session_id}/say", json={"text": "Sorry, one moment.", "interrupt": True}, headers=auth)
        assert (await resp.json())["status"] == "speaking"
        await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Sorry"))
    finally:
        await customer.close()


async def test_api_auth_failures(client: TestClient) -> None:  # type: ignore[type-arg]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        resp = await client.post("/api/sessions/x/say", json={"text": "hi"}, headers=headers)
        assert resp.status == 401
        assert "error" in await resp.json()
        resp = await client.post("/api/sessions/x/interrupt", headers=headers)
        assert resp.status == 401
        assert (await client.get("/api/sessions", headers=headers)).status == 401


async def test_bad_input(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"type": "offer"}', 400, "'sdp' is required"),
        (b'{"sdp": "v=0\\r\\n", "type": "answer"}', 400, "must be"),
        (b'{"sdp": "hello", "type": "offer"}', 400, "not an SDP offer"),
        (b'{"sdp": "v=0\\r\\no=- 1 1 IN IP4 0.0.0.0\\r\\ns=-\\r\\nt=0 0\\r\\n", "type": "offer"}', 400, "offer"),
    ]
    for body, status, message in cases:
        resp = await client.post("/api/offer", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == status, body
        assert message in (await resp.json())["error"]
    # Unknown avatar and unknown session: 404 with a message.
    customer = RtcCustomer()
    offer = await customer.offer()
    resp = await client.post("/api/offer", json={**offer, "avatar": "nobody"})
    assert resp.status == 404 and "nobody" in (await resp.json())["error"]
    await customer.close()
    resp = await client.post("/api/sessions/nope/say", json={"text": "hi"}, headers=auth)
    assert resp.status == 404
    # Oversized body: 413.
    resp = await client.post("/api/offer", data=b"x" * (32 * 1024), headers={"Content-Type": "application/json"})
    assert resp.status == 413 and "too large" in (await resp.json())["error"]
    # Say with bad fields.
    assert (await client.get("/healthz")).status == 200
    assert not (await (await client.get("/api/sessions", headers=auth)).json())["sessions"]


async def test_server_full_gives_503_and_disconnect_frees_session(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customers = []
    try:
        for _ in range(3):  # max_sessions=3 in the test settings
            customers.append((await connect(client))[0])
        extra = RtcCustomer()
        resp = await client.post("/api/offer", json=await extra.offer())
        assert resp.status == 503 and "full" in (await resp.json())["error"]
        await extra.close()
        # A customer leaving frees its session.
        await customers.pop().close()
        for _ in range(100):
            listed = await (await client.get("/api/sessions", headers=auth)).json()
            if len(listed["sessions"]) == 2:
                break
            await asyncio.sleep(0.1)
        assert len(listed["sessions"]) == 2
        customers.append((await connect(client))[0])
    finally:
        for c in customers:
            await c.close()


async def test_bad_data_channel_messages_get_errors_not_crashes(client: TestClient) -> None:  # type: ignore[type-arg]
    customer, _ = await connect(client)
    try:
        customer.channel.send("not json")
        customer.send({"no": "type"})
        customer.send({"type": "text", "text": ""})
        customer.send({"type": "text", "text": "x" * 5000})
        customer.send({"type": "launch"})
        await customer.wait_for_event(lambda e: e["type"] == "error" and "unknown" in e["message"])
        errors = [e for e in customer.got.events if e["type"] == "error"]
        assert len(errors) == 5
        assert (await client.get("/healthz")).status == 200
    finally:
        await customer.close()


async def test_mirror_mode_webcam_drives_the_avatar_face(client: TestClient) -> None:  # type: ignore[type-arg]
    """A peer in mirror mode sends its camera; the server tracks the face and the stage shows it."""
    from pathlib import Path

    import av
    import cv2
    from aiortc import VideoStreamTrack

    from avatar.mirror import PuppetFace
    from avatar.server.app import SESSIONS

    portrait = cv2.cvtColor(cv2.imread(str(Path("assets/avatars/astronaut/portrait.jpg"))), cv2.COLOR_BGR2RGB)

    class Webcam(VideoStreamTrack):
        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame.from_ndarray(portrait, format="rgb24")
            frame.pts, frame.time_base = pts, time_base
            return frame

    customer = RtcCustomer()
    customer.pc.addTrack(Webcam())  # the video transceiver now sends the camera too
    body = await customer.offer()
    resp = await client.post("/api/offer", json={**body, "mode": "mirror"})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    await customer.accept(answer)
    try:
        session = client.app[SESSIONS].get(answer["session_id"])
        assert session is not None and session.mode == "mirror"
        for _ in range(150):
            override = session.stage.face_override
            if isinstance(override, PuppetFace) and override.puppet.faces > 0:
                break
            await asyncio.sleep(0.1)
        override = session.stage.face_override
        assert override is not None, "the camera never reached the stage"
        assert isinstance(override, PuppetFace) and override.puppet.faces > 0
        # The stage's face now comes from the tracked person (a real face, not the idle default).
        t = session.stage.clock.time()
        assert session.stage.face_at(t) == override.state_at(t)
    finally:
        await customer.close()


def test_customer_never_sees_who_drives_the_avatar() -> None:
    from avatar.server.sessions import for_customer

    assert for_customer({"type": "caption", "speaker": "alice", "text": "hi"})["speaker"] == "avatar"
    assert for_customer({"type": "caption", "speaker": "ai", "text": "hi"})["speaker"] == "avatar"
    assert for_customer({"type": "transcript", "speaker": "customer", "text": "x"})["speaker"] == "customer"
    assert for_customer({"type": "state", "state": "idle"}) == {"type": "state", "state": "idle"}


async def test_configured_video_codec_is_what_the_answer_uses(client: TestClient) -> None:  # type: ignore[type-arg]
    """The customer offers VP8 first (as browsers do); the server's configured preference wins."""
    from avatar.server.app import SESSIONS

    manager = client.app[SESSIONS]
    for codec in ("H264", "VP8"):
        manager.settings = replace(manager.settings, video_codec=codec)
        customer = RtcCustomer()
        resp = await client.post("/api/offer", json=await customer.offer())
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
        video = answer["sdp"].split("m=video", 1)[1]
        first_payload = video.split("\r\n", 1)[0].split()[2]
        assert f"a=rtpmap:{first_payload} {codec}/90000" in video, (codec, video[:400])
        await customer.accept(answer)
        await customer.close()
        await manager.close(answer["session_id"])
