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
- one operator, N avatars: N held sessions, one ``POST /api/operator/say`` to all of them;
  per session, the time until its first audio.

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
from avatar.server.app import SESSIONS, create_app  # noqa: E402
from avatar.server.operator_routes import OPERATORS  # noqa: E402
from avatar.stage import Stage  # noqa: E402
from bench._report import write_section  # noqa: E402
from tests.rtc_client import RtcCustomer  # noqa: E402

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


async def run(sessions: int, rounds: int) -> dict[str, list[float]]:
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
    out: dict[str, list[float]] = {"silent": [], "first_audio": [], "multi": []}
    try:
        ops = client.app[OPERATORS]
        await asyncio.to_thread(ops.accounts.add, "alice", "bench-password")
        login = await client.post("/api/operator/login", json={"name": "alice", "password": "bench-password"})
        alice = {"Authorization": f"Bearer {(await login.json())['token']}"}
        auth = {"Authorization": "Bearer bench"}
        for _ in range(sessions):
            customers.append((await connect(client))[0])
        ids = list(client.app[SESSIONS].sessions)
        sid = ids[0]
        stage = client.app[SESSIONS].sessions[sid].stage
        for _ in range(rounds):
            await client.post(f"/api/sessions/{sid}/say", json={"text": LONG_LINE}, headers=auth)
            await until(lambda: voiced_now(stage))
            await asyncio.sleep(0.5)  # mid-sentence
            start = time.perf_counter()
            post = asyncio.ensure_future(client.post(f"/api/sessions/{sid}/takeover", headers=alice))
            await until(lambda: not voiced_now(stage))
            out["silent"].append(time.perf_counter() - start)
            assert (await post).status == 200
            await asyncio.sleep(0.3)
            start = time.perf_counter()
            post = asyncio.ensure_future(client.post(f"/api/sessions/{sid}/say", json={"text": OPERATOR_LINE}, headers=alice))
            await until(lambda: voiced_now(stage))
            out["first_audio"].append(time.perf_counter() - start)
            assert (await post).status == 200
            await until(lambda: not client.app[SESSIONS].sessions[sid].speaker.busy)
            await client.post(f"/api/sessions/{sid}/handback", headers=alice)
        for other in ids:
            await client.post(f"/api/sessions/{other}/takeover", headers=alice)
        await asyncio.sleep(1.0)
        stages = [client.app[SESSIONS].sessions[i].stage for i in ids]
        for _ in range(max(1, rounds // 2)):
            start = time.perf_counter()
            post = asyncio.ensure_future(
                client.post("/api/operator/say", json={"sessions": ids, "text": OPERATOR_LINE}, headers=alice)
            )
            pending = set(range(len(stages)))
            while pending:
                for i in list(pending):
                    if voiced_now(stages[i]):
                        out["multi"].append(time.perf_counter() - start)
                        pending.discard(i)
                if time.perf_counter() - start > 30:
                    raise TimeoutError("not every avatar spoke")
                await asyncio.sleep(POLL)
            assert (await post).status == 200
            await until(lambda: not any(s.speaker.busy for s in client.app[SESSIONS].sessions.values()), 30)
    finally:
        for c in customers:
            await c.close()
        await client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out = asyncio.run(run(args.sessions, args.rounds))
    section = "\n".join(
        [
            "## Operator takeover",
            "",
            f"`.venv/bin/python bench/bench_takeover.py --sessions {args.sessions} --rounds {args.rounds}` on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), offline Piper voice, "
            "every session streaming audio and video to an in-process aiortc customer. Times are measured at the "
            "stage's playhead on the server (what the audio track sends next); the network and the browser's "
            "jitter buffer come on top.",
            "",
            "| what | result |",
            "|---|---|",
            f"| takeover call to AI silent | {ms(out['silent'])} |",
            f"| operator text to first audio (1 session held) | {ms(out['first_audio'])} |",
            f"| one operator, one line to {args.sessions} avatars: text to each avatar's first audio | {ms(out['multi'])} |",
        ]
    )
    print(section)
    if not args.no_write:
        write_section("takeover", section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
