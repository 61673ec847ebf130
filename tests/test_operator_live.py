"""The operator's live media against the real app with in-process aiortc peers: watching a session
(the avatar's video and voice plus the customer's microphone), voice mode (the operator's
microphone is the avatar's voice), camera mode (the operator's face drives the avatar), the
customer's history by customer id, and a handback that gives the AI the whole conversation."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
import wave
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
from aiohttp.test_utils import TestClient
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack, VideoStreamTrack
from scipy.signal import resample_poly

from avatar.drivers import BrainDriver
from avatar.server.app import ENGINES, SESSIONS
from avatar.server.operator_routes import OPERATOR_MEDIA
from tests.rtc_client import RtcCustomer
from tests.test_operator_api import sign_in, wait_until
from tests.test_server import connect

DATA = Path(__file__).parent / "data"


class ClipMic(MediaStreamTrack):
    """A microphone that plays ``audio`` (48 kHz mono int16) in real time, then silence."""

    kind = "audio"

    def __init__(self, audio: np.ndarray) -> None:
        super().__init__()
        self.audio = audio
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent / 48_000 - time.monotonic()))
        chunk = np.zeros(960, np.int16)
        part = self.audio[self.sent : self.sent + 960]
        chunk[: len(part)] = part
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = self.sent
        frame.time_base = fractions.Fraction(1, 48_000)
        self.sent += 960
        return frame


class FaceCam(VideoStreamTrack):
    """A webcam that shows one photo of a face."""

    def __init__(self, photo: Path) -> None:
        super().__init__()
        bgr = cv2.imread(str(photo))
        self.rgb = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (480, 480))

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.rgb, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 48_000)) / 48_000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def speech(name: str) -> np.ndarray:
    with wave.open(str(DATA / "speech" / f"{name}.wav"), "rb") as wav:
        audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
        rate = wav.getframerate()
    return np.clip(resample_poly(audio.astype(np.float64), 48_000, rate), -32768, 32767).astype(np.int16)


class Watcher:
    """An operator's receive-only peer: the avatar's voice, the customer's microphone, the video."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.audio = [self.pc.addTransceiver("audio", direction="recvonly") for _ in range(2)]
        self.pc.addTransceiver("video", direction="recvonly")
        self.rms: dict[int, list[float]] = {0: [], 1: []}
        self.luma: list[float] = []
        self._tasks: list[asyncio.Task[None]] = []

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def offer(self) -> dict[str, str]:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return {"sdp": self.pc.localDescription.sdp, "type": "offer"}

    async def accept(self, answer: dict[str, Any]) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.luma.append(float(frame.to_ndarray(format="gray").mean()))
                else:
                    slot = 0 if track is self.audio[0].receiver.track else 1
                    samples = frame.to_ndarray().astype(np.float64)
                    self.rms[slot].append(float(np.sqrt(np.mean(samples**2))))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()


class Driver:
    """An operator's send-only peer: microphone and/or webcam."""

    def __init__(self, *tracks: MediaStreamTrack) -> None:
        self.pc = RTCPeerConnection()
        for track in tracks:
            self.pc.addTransceiver(track, direction="sendonly")

    async def start(self, client: TestClient, sid: str, headers: dict[str, str]) -> Any:  # type: ignore[type-arg]
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        resp = await client.post(f"/api/operator/sessions/{sid}/drive", json=body, headers=headers)
        if resp.status == 200:
            answer = await resp.json()
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        return resp


async def customer_with_mic(client: TestClient, mic: MediaStreamTrack, **extra: Any) -> tuple[RtcCustomer, str]:  # type: ignore[type-arg]
    customer = RtcCustomer()
    customer.pc.getTransceivers()[0].sender.replaceTrack(mic)
    customer.pc.getTransceivers()[0].direction = "sendrecv"
    resp = await client.post("/api/offer", json={**await customer.offer(), **extra})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    await customer.accept(answer)
    await asyncio.wait_for(customer.channel_open.wait(), 10)
    return customer, answer["session_id"]


async def test_watch_shows_the_avatar_and_plays_the_customer(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customer, sid = await customer_with_mic(client, ClipMic(tone(30.0)))
    alice = await sign_in(client, "alice")
    watcher = Watcher()
    media = client.app[OPERATOR_MEDIA]
    try:
        resp = await client.post(f"/api/operator/sessions/{sid}/watch", json=await watcher.offer(), headers=alice)
        assert resp.status == 200, await resp.text()
        await watcher.accept(await resp.json())
        # The picture: frames decoded, and not black.
        await wait_until(lambda: len(watcher.luma) >= 10, within=20)
        assert np.median(watcher.luma) > 20
        # The customer's microphone (a tone) on the second audio track.
        await wait_until(lambda: sum(r > 1000 for r in watcher.rms[1]) >= 10, within=20)
        # The avatar's voice on the first, as the customer hears it.
        assert (await client.post(f"/api/sessions/{sid}/say", json={"text": "Hello operator."}, headers=auth)).status == 200
        await wait_until(lambda: sum(r > 300 for r in watcher.rms[0]) >= 5, within=20)
        await customer.wait_for_event(lambda e: e["type"] == "caption")  # the customer's stream is untouched
        assert [p.kind for p in media.peers] == ["watch"]

        # Refusals: no token, a customer's session id, bad SDP, unknown session.
        offer = await Watcher().offer()
        assert (await client.post(f"/api/operator/sessions/{sid}/watch", json=offer)).status == 401
        bad_token = {"Authorization": f"Bearer {sid}"}
        assert (await client.post(f"/api/operator/sessions/{sid}/watch", json=offer, headers=bad_token)).status == 401
        bad = await client.post(f"/api/operator/sessions/{sid}/watch", json={"sdp": "v=0 nonsense", "type": "offer"},
                                headers=alice)
        assert bad.status == 400 and "error" in await bad.json()
        assert (await client.post("/api/operator/sessions/nope/watch", json=offer, headers=alice)).status == 404
        assert len(media.peers) == 1  # the failed offers left nothing open

        # Signing out closes what the operator had open.
        assert (await client.post("/api/operator/logout", headers=alice)).status == 200
        assert media.peers == []
    finally:
        await watcher.close()
        await customer.close()


async def test_watch_closes_with_the_session(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    watcher = Watcher()
    media = client.app[OPERATOR_MEDIA]
    try:
        resp = await client.post(f"/api/operator/sessions/{sid}/watch", json=await watcher.offer(), headers=alice)
        assert resp.status == 200, await resp.text()
        await watcher.accept(await resp.json())
        await wait_until(lambda: len(watcher.luma) >= 3, within=20)
        # The panel closes its view (another session opened)...
        closed = await (await client.delete(f"/api/operator/sessions/{sid}/watch", headers=alice)).json()
        assert closed == {"status": "closed", "closed": 1} and media.peers == []
        await watcher.close()
        # ...and a view still open when the call ends closes with it.
        watcher = Watcher()
        resp = await client.post(f"/api/operator/sessions/{sid}/watch", json=await watcher.offer(), headers=alice)
        assert resp.status == 200, await resp.text()
        await watcher.accept(await resp.json())
        assert len(media.peers) == 1
        assert (await client.delete(f"/api/sessions/{sid}", headers=auth)).status == 200
        await wait_until(lambda: media.peers == [])
    finally:
        await watcher.close()
        await customer.close()


async def test_voice_mode_speaks_with_the_operators_voice(client: TestClient) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    bob = await sign_in(client, "bob")
    media = client.app[OPERATOR_MEDIA]
    voice = np.concatenate([np.zeros(24_000, np.int16), speech("activate_card"), np.zeros(48_000, np.int16)])
    driver = Driver(ClipMic(voice))
    try:
        # Only the holder drives.
        refused = await Driver(ClipMic(voice)).start(client, sid, alice)
        assert refused.status == 409 and "does not hold" in (await refused.json())["error"]
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        assert (await Driver(ClipMic(voice)).start(client, sid, bob)).status == 409

        quiet_before = len(customer.got.audio_rms)
        resp = await driver.start(client, sid, alice)
        assert resp.status == 200, await resp.text()
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        # The customer hears the operator's voice on the avatar's own audio track...
        await wait_until(lambda: sum(r > 300 for r in customer.got.audio_rms[quiet_before:]) >= 10, within=20)
        # ...and the utterance is in the transcript under the operator's name.
        await wait_until(lambda: any(e.meta.get("voice") for e in session.transcript), within=30)
        entry = next(e for e in session.transcript if e.meta.get("voice"))
        assert entry.speaker == "alice"
        engines = client.app[ENGINES]
        try:
            await asyncio.to_thread(engines.recognizer)
            transcribed = True
        except Exception:
            transcribed = False
        if transcribed:
            assert "card" in entry.text.lower(), entry.text
        else:
            assert "not transcribed" in entry.text
        # The customer's page never learns who spoke.
        spoken = await customer.wait_for_event(lambda e: e.get("type") == "transcript" and e.get("text") == entry.text)
        assert spoken["speaker"] == "avatar"
        assert media.describe(sid)["voice"] is True

        # Handing back stops the operator's microphone driving the avatar.
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        await wait_until(lambda: media.find("drive", sid) == [])
    finally:
        await driver.pc.close()
        await customer.close()


async def test_camera_mode_drives_the_avatars_face(client: TestClient) -> None:  # type: ignore[type-arg]
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    media = client.app[OPERATOR_MEDIA]
    driver = Driver(FaceCam(DATA / "faces" / "obama.jpg"))
    try:
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        resp = await driver.start(client, sid, alice)
        assert resp.status == 200, await resp.text()
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        stage = session.stage
        await wait_until(lambda: stage.face_override is not None, within=30)
        puppet = stage.face_override.puppet  # type: ignore[union-attr]
        await wait_until(lambda: puppet.faces >= 5, within=30)  # the operator's face is tracked
        assert media.describe(sid)["camera"] is True
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        await wait_until(lambda: stage.face_override is None)  # the idle animation is back
        # An offer that sends nothing drives nothing.
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        empty = await Driver().start(client, sid, alice)
        assert empty.status == 400
    finally:
        await driver.pc.close()
        await customer.close()


async def test_customer_id_and_history(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    probe = RtcCustomer()
    offer = await probe.offer()
    for bad in ("has space", "x" * 65, 42, ""):
        resp = await client.post("/api/offer", json={**offer, "customer_id": bad})
        assert resp.status == 400, bad
        assert "customer_id" in (await resp.json())["error"]
    await probe.close()

    first, sid1 = await customer_with_mic(client, ClipMic(np.zeros(0, np.int16)), customer_id="cust-42")
    first.send({"type": "text", "text": "My first visit"})
    await first.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("My first"))
    alice = await sign_in(client, "alice")
    await wait_until(lambda: len(client.app[SESSIONS].get(sid1).transcript) >= 2)  # type: ignore[union-attr]
    assert (await client.delete(f"/api/sessions/{sid1}", headers=auth)).status == 200
    await first.close()

    second, sid2 = await customer_with_mic(client, ClipMic(np.zeros(0, np.int16)), customer_id="cust-42")
    other, sid3 = await connect(client)
    try:
        body = await (await client.get(f"/api/operator/sessions/{sid2}/history", headers=alice)).json()
        assert body["customer_id"] == "cust-42"
        assert [s["session_id"] for s in body["sessions"]] == [sid1]
        said = [(u["speaker"], u["text"]) for u in body["sessions"][0]["utterances"]]
        assert said == [("customer", "My first visit"), ("ai", "My first visit")]
        summary = (await (await client.get("/api/operator/sessions", headers=alice)).json())["sessions"]
        assert {s["session_id"]: s["customer_id"] for s in summary}[sid2] == "cust-42"
        # No customer id: no history. No token: 401. Unknown session: 404.
        none = await (await client.get(f"/api/operator/sessions/{sid3}/history", headers=alice)).json()
        assert none == {"session_id": sid3, "customer_id": None, "sessions": []}
        assert (await client.get(f"/api/operator/sessions/{sid2}/history")).status == 401
        assert (await client.get("/api/operator/sessions/nope/history", headers=alice)).status == 404
    finally:
        await second.close()
        await other.close()


class DraftingBrain:
    """A stand-in for the brain while an operator holds the session: drafts one suggestion and,
    like the real one, writes the turn and its draft into the context it is given."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []

    def reply(self, context: Any, text: str) -> Any:
        self.contexts.append(context)
        context.add("customer", text)
        context.add("assistant", "Draft: I can block your card.")

        class Reply:
            def to_dict(self) -> dict[str, Any]:
                return {"text": "Draft: I can block your card.", "suggestions": ["I can block your card."],
                        "emotion": 0.4, "topic": "lost_or_stolen_card"}

        return Reply()


async def test_handback_gives_the_ai_the_whole_conversation(client: TestClient) -> None:  # type: ignore[type-arg]
    engines = client.app[ENGINES]
    drivers: list[BrainDriver] = []
    brain, previous = DraftingBrain(), engines.brain

    def brain_driver() -> BrainDriver:
        drivers.append(BrainDriver(engines))
        return drivers[-1]

    client.app[SESSIONS].driver_factory = brain_driver
    customer, sid = await connect(client)
    alice = await sign_in(client, "alice")
    try:
        assert (await client.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
        engines.brain = brain
        customer.send({"type": "text", "text": "My card 4111 1111 1111 1111 was stolen"})
        session = client.app[SESSIONS].get(sid)
        assert session is not None
        await wait_until(lambda: session.last_reply is not None)
        # The operator gets the brain's suggestion; the draft is not part of the conversation.
        summary = (await (await client.get("/api/operator/sessions", headers=alice)).json())["sessions"][0]
        assert summary["suggestions"] == ["I can block your card."]
        assert brain.contexts[0] is not drivers[0].context
        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": "I have blocked that card."}, headers=alice)
        assert resp.status == 200
        await wait_until(lambda: any(e.speaker == "alice" for e in session.transcript), within=20)
        assert (await client.post(f"/api/sessions/{sid}/handback", headers=alice)).status == 200
        history = [(t.role, t.text) for t in drivers[0].context.history]
        assert history[0][0] == "customer" and "4111" not in history[0][1] and "stolen" in history[0][1]
        assert history[1] == ("assistant", "I have blocked that card.")
        assert len(history) == 2  # no draft in it
        assert session.driver is drivers[0]  # the same AI, with that context, answers next
    finally:
        engines.brain = previous
        await customer.close()
