"""Benchmark: takeover latency, and one operator driving many avatars at once.

    .venv/bin/python bench/bench_takeover.py [--sessions 10] [--rounds 5] [--no-write]

Runs the real app in process (aiohttp test server, echo driver, offline Piper voice) with
in-process aiortc customers receiving audio and video, and an operator signed in through the
HTTP API. Times are taken on the server's own objects, at the stage's playhead (what the
audio track sends next), polled every 2 ms:

- takeover -> AI silent: the AI is mid-sentence; from sending ``POST /takeover`` until the
  audio at the playhead is silence.
- operator text -> first audio: the session is idle and held; from sending ``POST /say``
  until the audio at the playhead carries the operator's voice (the issue's budget: 200 ms).
- takeover without cut (``takeover_cut = false``): the same, the AI finishing its word.
- voice mode: an in-process aiortc peer sends the operator's microphone (silence, then a loud
  burst) to ``/api/operator/sessions/{id}/drive``; from the burst's first frame leaving the
  peer until the stage's playhead carries it.
- one operator, N avatars: N held sessions, one ``POST /api/operator/say`` to all of them;
  per session, the time until its first audio; the video frames skipped as late on the N
  streams meanwhile, and the process's CPU time per wall second.

Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:takeover -->`` and
``<!-- /bench:takeover -->`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from avatar.config import load_settings  # noqa: E402
from avatar.server.app import ENGINES, SESSIONS, create_app  # noqa: E402
from avatar.server.operator_routes import OPERATORS  # noqa: E402
from avatar.speech.tts.stream import speak_stream  # noqa: E402
from avatar.stage import Stage  # noqa: E402
from bench._report import write_section  # noqa: E402
from tests.rtc_client import RtcCustomer  # noqa: E402
from tests.test_operator_live import ClipMic, Driver  # noqa: E402

LONG_LINE = (
    "Thank you for calling. Our savings account pays interest monthly, and you can open one online "
    "in a few minutes with your identity card and a phone number."
)
OPERATOR_LINE = "Hello, this is Alice from the bank."
POLL = 0.002


def voiced_now(stage: Stage) -> bool:
    return bool(stage.read_audio(stage.clock.sample(), 960).any())


async def until(predicate: Any, within: float = 20.0) -> float:
    """Seconds until ``predicate()`` holds (polled every 2 ms)."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > within:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(POLL)
    return time.perf_counter() - start


async def connect(client: TestClient) -> tuple[RtcCustomer, str]:  # type: ignore[type-arg]
    customer = RtcCustomer()
    resp = await client.post("/api/offer", json=await customer.offer())
    answer = await resp.json()
    await customer.accept(answer)
    await asyncio.wait_for(customer.channel_open.wait(), 20)
    return customer, answer["session_id"]


def ms(values: list[float]) -> str:
    a = np.array(values) * 1000
    return f"median {np.median(a):.0f} ms, max {a.max():.0f} ms (n={len(a)})"


async def run(sessions: int, rounds: int) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-takeover-"))
    settings = load_settings(
        env={},
        overrides={
            "data_dir": data, "api_token": "bench", "driver": "echo",
            "max_sessions": sessions + 1, "max_sessions_per_client": sessions + 1,  # all on 127.0.0.1
        },
    )
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    customers: list[RtcCustomer] = []
    drivers: list[Driver] = []
    out: dict[str, Any] = {
        "silent": [], "word_end": [], "first_audio": [], "cached": [], "voice": [], "piece_wall": [], "piece_cpu": [], "multi": [],
        "late": 0, "frames": 0, "lost": 0, "cpu": [], "load": [os.getloadavg()[0]],
    }
    try:
        ops = client.app[OPERATORS]
        await asyncio.to_thread(ops.accounts.add, "alice", "bench-password")
        login = await client.post("/api/operator/login", json={"name": "alice", "password": "bench-password"})
        alice = {"Authorization": f"Bearer {(await login.json())['token']}"}
        auth = {"Authorization": "Bearer bench"}
        # The first piece of a new line, synthesised alone (no session streaming yet): wall and
        # process CPU time, which a loaded machine does not inflate the way it does wall time.
        engines = client.app[ENGINES]
        voice = engines.tts.voice_for(settings.default_avatar, "en")
        for i in range(rounds + 1):  # the first one warms the voice up and is not counted
            wall0, cpu0 = time.perf_counter(), time.process_time()
            async for _chunk in speak_stream(engines.tts, f"Probe {i}: {OPERATOR_LINE}", voice):
                if i:
                    out["piece_wall"].append(time.perf_counter() - wall0)
                    out["piece_cpu"].append(time.process_time() - cpu0)
                break
        # One session for the takeover and voice figures; the others join for the many-avatars part.
        customers.append((await connect(client))[0])
        sid = next(iter(client.app[SESSIONS].sessions))
        session = client.app[SESSIONS].sessions[sid]
        stage = session.stage
        desk = ops.desk
        for i in range(rounds * 2):
            # Odd rounds: takeover_cut = false, the AI finishes the word it is saying.
            desk.cut = i % 2 == 0
            await client.post(f"/api/sessions/{sid}/say", json={"text": LONG_LINE}, headers=auth)
            await until(lambda: voiced_now(stage))
            await asyncio.sleep(0.5)  # mid-sentence
            start = time.perf_counter()
            post = asyncio.ensure_future(client.post(f"/api/sessions/{sid}/takeover", headers=alice))
            await until(lambda: not voiced_now(stage))
            out["silent" if desk.cut else "word_end"].append(time.perf_counter() - start)
            assert (await post).status == 200
            await asyncio.sleep(0.3)
            if desk.cut:
                # A line never said before (synthesised now), then the same line again (the cache).
                line = f"Round {i + 1}: {OPERATOR_LINE}"
                for key in ("first_audio", "cached"):
                    start = time.perf_counter()
                    post = asyncio.ensure_future(
                        client.post(f"/api/sessions/{sid}/say", json={"text": line}, headers=alice)
                    )
                    await until(lambda: voiced_now(stage))
                    out[key].append(time.perf_counter() - start)
                    assert (await post).status == 200
                    await until(lambda: not session.speaker.busy)
            await client.post(f"/api/sessions/{sid}/handback", headers=alice)
        desk.cut = True

        # Voice mode: the operator's microphone (in-process aiortc peer) to the avatar's audio.
        await client.post(f"/api/sessions/{sid}/takeover", headers=alice)
        for _ in range(rounds):
            mic = BurstMic(onset=1.0, seconds=0.5)
            driver = Driver(mic)
            drivers.append(driver)
            assert (await driver.start(client, sid, alice)).status == 200
            await until(lambda mic=mic: mic.onset_at is not None)
            await until(lambda: voiced_now(stage))
            assert mic.onset_at is not None
            out["voice"].append(time.perf_counter() - mic.onset_at)
            await until(lambda: not voiced_now(stage) and stage.speaking_until() < stage.clock.time())
            await driver.pc.close()
        await client.post(f"/api/sessions/{sid}/handback", headers=alice)

        for _ in range(sessions - 1):
            customers.append((await connect(client))[0])
        ids = list(client.app[SESSIONS].sessions)
        for other in ids:
            await client.post(f"/api/sessions/{other}/takeover", headers=alice)
        await asyncio.sleep(1.0)
        manager = client.app[SESSIONS]
        stages = [manager.sessions[i].stage for i in ids]
        videos = [manager.peers[i].video for i in ids]
        for n in range(max(1, rounds // 2)):
            line = f"Everyone, round {n + 1}: {OPERATOR_LINE}"  # never said before: synthesised now
            late0 = sum(v.frames_late for v in videos)
            sent0 = sum(v.frames_sent for v in videos)
            cpu0 = time.process_time()
            start = time.perf_counter()
            post = asyncio.ensure_future(
                client.post("/api/operator/say", json={"sessions": ids, "text": line}, headers=alice)
            )
            pending = set(range(len(stages)))
            while pending:
                for i in list(pending):
                    if ids[i] not in manager.sessions:
                        out["lost"] += 1  # its customer's connection failed (a starved machine)
                        pending.discard(i)
                    elif voiced_now(stages[i]):
                        out["multi"].append(time.perf_counter() - start)
                        pending.discard(i)
                if time.perf_counter() - start > 60:
                    raise TimeoutError(f"{len(pending)} avatars did not speak within 60 s")
                await asyncio.sleep(POLL)
            assert (await post).status == 200
            await until(lambda: not any(s.speaker.busy for s in manager.sessions.values()), 30)
            out["cpu"].append((time.process_time() - cpu0) / (time.perf_counter() - start))
            out["late"] += sum(v.frames_late for v in videos) - late0
            out["frames"] += sum(v.frames_sent for v in videos) - sent0
    finally:
        out["load"].append(os.getloadavg()[0])
        for d in drivers:
            await d.pc.close()
        for c in customers:
            await c.close()
        await client.close()
    return out


class BurstMic(ClipMic):
    """Silence, then a loud vowel-like burst at ``onset`` seconds; notes when the burst's first
    frame leaves."""

    def __init__(self, onset: float, seconds: float) -> None:
        t = np.arange(int(seconds * 48_000)) / 48_000
        burst = (9000 * np.sign(np.sin(2 * np.pi * 150 * t)) * np.sin(2 * np.pi * 700 * t)).astype(np.int16)
        super().__init__(np.concatenate([np.zeros(int(onset * 48_000), np.int16), burst]))
        self.onset = int(onset * 48_000)
        self.onset_at: float | None = None

    async def recv(self) -> Any:
        frame = await super().recv()
        if self.onset_at is None and self.sent > self.onset:
            self.onset_at = time.perf_counter()
        return frame


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args.sessions, args.rounds))
    late = out["late"] / max(out["frames"], 1)
    section = "\n".join(
        [
            "## Operator takeover",
            "",
            f"`.venv/bin/python bench/bench_takeover.py --sessions {args.sessions} --rounds {args.rounds}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs: load "
            f"average {out['load'][0]:.1f} at the start, {out['load'][1]:.1f} at the end), offline Piper voice, "
            "every session streaming audio and video to an in-process aiortc customer. Times are measured at the "
            "stage's playhead on the server (what the audio track sends next); the network and the browser's "
            "jitter buffer come on top.",
            "",
            "| what | result |",
            "|---|---|",
            f"| takeover call to AI silent (`takeover_cut = true`) | {ms(out['silent'])} |",
            f"| takeover call to AI silent at the next word boundary (`takeover_cut = false`) | {ms(out['word_end'])} |",
            f"| operator text to first audio (1 session held; target 200 ms), a new line | {ms(out['first_audio'])} |",
            f"| the same line again (synthesis cache) | {ms(out['cached'])} |",
            f"| the first Piper piece of a new line alone, no session on air: wall time | {ms(out['piece_wall'])} |",
            f"| the same: process CPU time | {ms(out['piece_cpu'])} |",
            f"| voice mode: operator's microphone (aiortc peer, Opus) to the avatar's audio | {ms(out['voice'])} |",
            f"| one operator, one line to {args.sessions} avatars: text to each avatar's first audio | {ms(out['multi'])} |",
            f"| the same: video frames late (skipped) on the {args.sessions} streams | {out['late']} of "
            f"{out['frames']} ({late:.1%}) |",
            f"| the same: sessions lost meanwhile (customer connection failed) | {out['lost']} |",
            f"| the same: server CPU while the {args.sessions} avatars speak | "
            f"{np.median(out['cpu']):.2f} cores (median of {len(out['cpu'])} rounds) |",
            "",
            "The word-boundary figure is the rest of the word in progress (a word lasts about 0.3 s). The first "
            "audio of a typed line is the first Piper piece of the line (see the TTS section for the first-chunk "
            "work); a line said to many avatars is synthesised once (the shared sentence cache), then placed on "
            "each stage; every line measured here is new except the cache row. Voice mode adds the stage's 40 ms scheduling lead and the level gate's first frame to "
            "the Opus round trip. Wall times grow with the machine's load (see the load average: on a "
            "shared 2-core machine most of them is waiting for a core); the process CPU row is the work itself.",
        ]
    )
    print(section)
    if not args.no_write:
        write_section("takeover", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
