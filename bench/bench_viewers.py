"""Viewers of one broadcast stage: how many this machine holds at >= 24 fps each, and the server
CPU each extra viewer costs.

``avatar serve`` runs as a child process (its CPU is measured apart); one stage is created and
viewers join it in steps through ``POST /api/stages/{id}/offer``. The viewers are aiortc peers in
``--workers`` separate client processes that count the packets they receive without buffering or
decoding them (a viewer's browser does that on its own machine), so the client cost is separable,
small, and reported beside the server's.
At each step, after the joins settle, every viewer's received video frame rate is measured over
a window; a step holds when the slowest viewer gets >= 24 fps. The server renders and encodes
the stage once whatever the number of viewers (``avatar/rtc/fanout.py``), so its cost per viewer
is packetizing, SRTP and sending.

    .venv/bin/python bench/bench_viewers.py [--steps 1,25,50,100,150,200] [--window 6] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import _harness as h  # noqa: E402
from bench._report import write_section  # noqa: E402

FPS_FLOOR = 24.0
AUDIO_FLOOR = 45.0  # audio packets a second each viewer must get (50 sent: 20 ms each)
QUIET_OTHERS = 50.0  # % of one core other jobs may use when a window starts (see --quiet)
RETRIES = 2  # extra windows for a step that failed while other jobs were busy
JOIN_BATCH = 8  # viewers joining at once (each join is an ICE + DTLS handshake)
#: Said (cutting what is playing) before each window, so the stage speaks while it is measured.
LINE = (
    "Good evening and welcome to our live show. Tonight we look at savings accounts, how interest "
    "is paid, and what you can do in the app. Send us your questions at any time and we will answer "
    "them on air."
)


# -- client worker processes -----------------------------------------------------------------------
class Viewer:
    """A receive-only aiortc peer counting what arrives: video frames (RTP packets with the marker
    bit, which ends each frame) and audio packets. The packets are decrypted (SRTP) as in any
    receiver but go no further: no jitter buffer, no decoder thread, so one client process can
    stand in for many viewers (their browsers do that work on their own machines)."""

    def __init__(self) -> None:
        from aiortc import RTCPeerConnection

        self.pc = RTCPeerConnection()
        self.frames = {"audio": 0, "video": 0}
        for kind in ("audio", "video"):
            receiver = self.pc.addTransceiver(kind, direction="recvonly").receiver
            # aiortc's DTLS transport hands each packet to this method of its receiver.
            setattr(receiver, "_handle_rtp_packet", self._counter(kind))  # noqa: B010

    def _counter(self, kind: str) -> Any:
        frames = self.frames

        async def count(packet: Any, arrival_time_ms: int) -> None:
            if kind == "audio" or packet.marker:
                frames[kind] += 1

        return count

    async def join(self, http: Any, url: str) -> None:
        from aiortc import RTCSessionDescription

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        async with http.post(url, json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"join failed ({resp.status}): {answer.get('error')}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))

    async def close(self) -> None:
        await self.pc.close()


def client_worker(conn: Connection, offer_url: str) -> None:
    """Runs in a child process: ``("add", n)`` joins n viewers, ``("counts",)`` answers every
    viewer's (video, audio) frame counts, ``("stop",)`` closes them all."""
    h.loopback_ice_only()

    async def main() -> None:
        viewers: list[Viewer] = []
        loop = asyncio.get_running_loop()
        async with h.http_session() as http:
            try:
                while True:
                    command = await loop.run_in_executor(None, conn.recv)
                    if command[0] == "add":
                        errors: list[str] = []
                        for start in range(0, command[1], JOIN_BATCH):
                            batch = [Viewer() for _ in range(min(JOIN_BATCH, command[1] - start))]
                            joined = await asyncio.gather(
                                *(v.join(http, offer_url) for v in batch), return_exceptions=True
                            )
                            for viewer, outcome in zip(batch, joined, strict=True):
                                if isinstance(outcome, BaseException):
                                    errors.append(f"{type(outcome).__name__}: {outcome}")
                                    await viewer.close()
                                else:
                                    viewers.append(viewer)
                        conn.send((len(viewers), errors))
                    elif command[0] == "states":
                        states: dict[str, int] = {}
                        for v in viewers:
                            states[v.pc.connectionState] = states.get(v.pc.connectionState, 0) + 1
                        conn.send(states)
                    elif command[0] == "counts":
                        conn.send([(v.frames["video"], v.frames["audio"]) for v in viewers])
                    else:
                        break
            finally:
                await asyncio.gather(*(v.close() for v in viewers), return_exceptions=True)
                conn.send("stopped")

    asyncio.run(main())


class Clients:
    """``workers`` client processes; viewers are spread evenly over them."""

    def __init__(self, workers: int, offer_url: str) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=client_worker, args=(child, offer_url), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        self.count = 0

    def pids(self) -> dict[str, int]:
        return {f"client{i}": p.pid for i, p in enumerate(self.procs)}

    def grow(self, total: int) -> None:
        extra = total - self.count
        shares = [extra // len(self.conns) + (1 if i < extra % len(self.conns) else 0) for i in range(len(self.conns))]
        for conn, share in zip(self.conns, shares, strict=True):
            conn.send(("add", share))
        self.count = 0
        for conn in self.conns:
            if not conn.poll(300):
                raise RuntimeError("a client worker did not finish joining within 300 s")
            count, errors = conn.recv()
            self.count += count
            if errors:
                print(f"  {len(errors)} viewers could not join, e.g. {errors[0]}", flush=True)

    def states(self) -> dict[str, int]:
        """How many viewers' connections are in each state (connected, failed, ...)."""
        out: dict[str, int] = {}
        for conn in self.conns:
            conn.send(("states",))
        for conn in self.conns:
            for state, n in conn.recv().items():
                out[state] = out.get(state, 0) + n
        return out

    def counts(self) -> list[tuple[int, int]]:
        for conn in self.conns:
            conn.send(("counts",))
        out: list[tuple[int, int]] = []
        for conn in self.conns:
            out.extend(conn.recv())
        return out

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop",))
        for conn, proc in zip(self.conns, self.procs, strict=True):
            with contextlib.suppress(OSError, EOFError):
                if conn.poll(30):
                    conn.recv()
            proc.join(10)
            if proc.is_alive():
                proc.kill()


# -- the measurement ------------------------------------------------------------------------------------
def measure_step(clients: Clients, server_pid: int, window: float, feed_sent: Any) -> dict[str, Any]:
    window_cpu = h.CpuWindow({"server": server_pid, **clients.pids()})
    before = clients.counts()
    sent0 = feed_sent()
    window_cpu.start()
    t0 = time.monotonic()
    time.sleep(window)
    after = clients.counts()
    elapsed = time.monotonic() - t0
    sent1 = feed_sent()
    cpu = window_cpu.stop()
    video = np.array([(a[0] - b[0]) / elapsed for a, b in zip(after, before, strict=True)])
    audio = np.array([(a[1] - b[1]) / elapsed for a, b in zip(after, before, strict=True)])
    clients_cpu = sum(v for k, v in cpu.items() if k.startswith("client"))
    return {
        "viewers": len(video),
        "fps_min": float(video.min()),
        "fps_p10": float(np.percentile(video, 10)),
        "fps_median": float(np.median(video)),
        "feed_fps": (sent1 - sent0) / elapsed,  # frames the server's shared feed sent out
        "audio_median": float(np.median(audio)),
        "server_cpu": cpu["server"],
        "clients_cpu": clients_cpu,
        "others_cpu": cpu["others"],
        "audio_min": float(audio.min()),
        "holds": bool(video.min() >= FPS_FLOOR and audio.min() >= AUDIO_FLOOR),
        "load": os.getloadavg()[0],
    }


def run(
    steps: list[int], window: float, settle: float, workers: int, quiet: float
) -> tuple[list[dict[str, Any]], str]:
    import json
    import urllib.request

    # INFO: the log says when viewers join and leave (shown when a step fails).
    with h.ServerProcess(max_sessions=8, env={"AVATAR_LOG_LEVEL": "INFO"}) as server:
        request = urllib.request.Request(
            f"{server.url}/api/stages",
            method="POST",
            data=json.dumps({"driver": "script"}).encode(),
            headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as resp:
            stage = json.load(resp)
        offer_url = f"{server.url}/api/stages/{stage['stage_id']}/offer?key={stage['view_key']}"

        def say() -> None:
            request = urllib.request.Request(
                f"{server.url}/api/sessions/{stage['stage_id']}/say",
                method="POST",
                data=json.dumps({"text": LINE, "interrupt": True}).encode(),
                headers={"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"},
            )
            urllib.request.urlopen(request, timeout=60).close()

        def feed_sent() -> int:
            request = urllib.request.Request(
                f"{server.url}/api/stages/{stage['stage_id']}", headers={"Authorization": f"Bearer {server.token}"}
            )
            with urllib.request.urlopen(request, timeout=60) as resp:
                return int(json.load(resp)["feeds"]["main"]["frames_sent"])

        clients = Clients(workers, offer_url)
        results: list[dict[str, Any]] = []
        try:
            for n in steps:
                clients.grow(n)
                for attempt in range(1, RETRIES + 2):
                    if quiet > 0:
                        asyncio.run(h.wait_for_quiet({"server": server.pid, **clients.pids()}, QUIET_OTHERS, quiet))
                    say()
                    time.sleep(settle)
                    result = measure_step(clients, server.pid, window, feed_sent)
                    result["attempts"] = attempt
                    # A window that failed while other jobs took the machine says little about
                    # this server: measure it again (at most RETRIES times).
                    if result["holds"] or result["others_cpu"] < QUIET_OTHERS:
                        break
                    print(f"{n:4d} viewers: failed with other jobs at {result['others_cpu']:.0f}%; again", flush=True)
                results.append(result)
                print(
                    f"{n:4d} viewers: fps min {result['fps_min']:.1f} p10 {result['fps_p10']:.1f} "
                    f"median {result['fps_median']:.1f} (feed {result['feed_fps']:.1f}); "
                    f"audio min {result['audio_min']:.0f}/s; server {result['server_cpu']:.0f}% "
                    f"clients {result['clients_cpu']:.0f}% others {result['others_cpu']:.0f}% of one core; "
                    f"load {result['load']:.1f} {'holds' if result['holds'] else 'FAILS'}",
                    flush=True,
                )
                if not result["holds"]:
                    print(f"viewers' connection states: {clients.states()}", flush=True)
                    tail = [line for line in server.log_tail(400).splitlines() if "aiohttp.access" not in line]
                    print("server log (last lines):\n" + "\n".join(tail[-25:]), flush=True)
                    break
        finally:
            clients.close()
        return results, stage["stage_id"]


def component_costs(frames: int = 100) -> dict[str, float]:
    """CPU ms per frame (process time, so other jobs barely skew it) of what the stage does once
    for all its viewers: render, the overlay's packing, VP8 encodes, and an Opus encode per 20 ms."""
    import tempfile

    from avatar.clock import VIDEO_TIME_BASE
    from avatar.face_state import FaceState, MouthShape
    from avatar.render.catalog import AvatarCatalog, default_assets_dir
    from avatar.rtc.fanout import _OpusEncoder, _VideoEncoder, pack_colour_alpha
    from avatar.rtc.tracks import rgb_to_video_frame

    with tempfile.TemporaryDirectory() as tmp:
        renderer = AvatarCatalog(default_assets_dir(), Path(tmp)).load("anna", 512, 512)
    def speaking(phase: float) -> list[FaceState]:
        """A speaking face: mouth and head move every frame; a new phase misses the renderer's caches."""
        return [
            FaceState(head_yaw=0.05 * np.sin(i / 7 + phase), breath=(i / frames + phase) % 1.0).with_mouth(
                MouthShape(open=0.5 + 0.5 * np.sin(i / 3 + phase))
            )
            for i in range(frames)
        ]

    states = speaking(0.0)

    def cpu_ms(work: Any) -> float:
        t0 = time.process_time()
        work()
        return (time.process_time() - t0) * 1000 / frames

    out: dict[str, float] = {}
    out["render RGB"] = cpu_ms(lambda: [renderer.render(s) for s in states])
    fresh = speaking(1.3)
    out["render RGBA"] = cpu_ms(lambda: [renderer.render_rgba(s) for s in fresh])
    rgba = [renderer.render_rgba(s) for s in states]
    out["pack colour + alpha"] = cpu_ms(lambda: [pack_colour_alpha(x) for x in rgba])
    main_frames = [rgb_to_video_frame(renderer.render(s)) for s in states]
    overlay_frames = [pack_colour_alpha(x) for x in rgba]
    for frames_list in (main_frames, overlay_frames):
        for i, f in enumerate(frames_list):
            f.pts = i * 3600
            f.time_base = VIDEO_TIME_BASE
    main_enc, overlay_enc = _VideoEncoder("VP8", 25, 1_000_000), _VideoEncoder("VP8", 25, 1_500_000)
    out["VP8 encode 512x512"] = cpu_ms(lambda: [main_enc.encode(f) for f in main_frames])
    out["VP8 encode 512x1040 (overlay)"] = cpu_ms(lambda: [overlay_enc.encode(f) for f in overlay_frames])
    opus = _OpusEncoder()
    audio = [_audio_frame(i) for i in range(frames)]
    out["Opus encode (20 ms)"] = cpu_ms(lambda: [opus.encode(a) for a in audio])
    return out


def _audio_frame(i: int) -> Any:
    import av

    from avatar.clock import AUDIO_TIME_BASE

    samples = (np.sin(np.arange(960) * 0.07 + i) * 6000).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
    frame.sample_rate = 48_000
    frame.pts = i * 960
    frame.time_base = AUDIO_TIME_BASE
    return frame


def per_viewer_cost(results: list[dict[str, Any]]) -> float:
    """Server CPU per extra viewer, % of one core: the slope of a least-squares line through the
    steps that held (the stage's one render and encode are the intercept)."""
    held = [r for r in results if r["holds"]]
    if len(held) < 2:
        return float("nan")
    x = np.array([r["viewers"] for r in held], dtype=float)
    y = np.array([r["server_cpu"] for r in held], dtype=float)
    slope, _ = np.polyfit(x, y, 1)
    return float(slope)


def window_note(result: dict[str, Any]) -> str:
    return "" if result["attempts"] == 1 else f" (window {result['attempts']})"


def section(results: list[dict[str, Any]], command: str, workers: int, components: dict[str, float]) -> str:
    held = [r for r in results if r["holds"]]
    most = max((r["viewers"] for r in held), default=0)
    slope = per_viewer_cost(results)
    rows = "\n".join(
        f"| {r['viewers']} | {r['fps_min']:.1f} / {r['fps_p10']:.1f} / {r['fps_median']:.1f} | {r['feed_fps']:.1f} | "
        f"{r['audio_min']:.0f} / {r['audio_median']:.0f} | {r['server_cpu']:.0f} | {r['clients_cpu']:.0f} | {r['others_cpu']:.0f} | "
        f"{r['load']:.1f} | {'yes' if r['holds'] else 'no'}{window_note(r)} |"
        for r in results
    )
    last_failed = results and not results[-1]["holds"]
    headline = (
        f"**{most} viewers** of one stage held >= {FPS_FLOOR:.0f} fps and their sound each"
        + ("" if last_failed else " (the largest step tried; the limit is higher)")
        + f"; server CPU per extra viewer **{slope:.2f} % of one core** "
        f"({slope * 10:.2f} ms of CPU per viewer per second)."
    )
    base = min((r["server_cpu"] for r in results if r["viewers"] == min(x["viewers"] for x in results)), default=0.0)
    if math.isfinite(slope) and slope > 0:
        projection = (
            f"At that slope the server alone (its one render and encode, {base:.0f} % of a core, plus the "
            f"viewers) would fill one core at about {max(0.0, (100 - base) / slope):.0f} viewers and both "
            f"cores at about {max(0.0, (200 - base) / slope):.0f}: an extrapolation; the table is what was "
            "measured, with the viewers' own processes on the same two cores."
        )
    else:
        projection = "Too few steps held to fit a cost per viewer."
    starved = ""
    if last_failed and results[-1]["others_cpu"] >= QUIET_OTHERS:
        r = results[-1]
        starved = (
            f"\n\nThe step at {r['viewers']} viewers failed while other jobs used {r['others_cpu']:.0f} % of "
            f"the two cores (the server got {r['server_cpu']:.0f} % of one, and its one encoder itself sent "
            f"{r['feed_fps']:.1f} fps): what this shared machine had left at the time, not the server's limit."
        )
    fps = 25
    per_viewer_encode = fps * components["VP8 encode 512x512"] + 50 * components["Opus encode (20 ms)"]
    component_rows = "\n".join(f"| {name} | {value:.2f} |" for name, value in components.items())
    return f"""## Viewers of one broadcast stage (bench/bench_viewers.py)

`{command}`

{headline}
{projection}{starved}

The stage is rendered once and encoded once per codec (VP8 here); every viewer gets the same
packets. The stage speaks throughout (a long line said again before each window). Viewers are
aiortc peers in {workers} client processes that count the packets they receive (decrypted, not
decoded: their browsers would decode), so the server's CPU is its own: per viewer it packetizes,
encrypts (SRTP) and sends about 25 video and 50 audio packets a second. Frame rates are each
viewer's received video frames over the window (RTP packets that end a frame); "feed fps" is what
the server's one encoder sent out over the same window (where viewers get fewer, the loss is on
the way to them). A step holds when the slowest viewer gets >= {FPS_FLOOR:.0f} fps and every viewer
>= {AUDIO_FLOOR:.0f} of the 50 audio packets a second. CPU is % of one
core over the window (200 = both cores); "others" is everything else running on the machine at
the time (this machine is shared): a step that fails while others use more than
{QUIET_OTHERS:.0f} % is measured again, up to {RETRIES} more windows ("window 2" in the table).

| viewers | video fps min / p10 / median | feed fps | audio pkts/s min / median | server CPU % | clients CPU % | others CPU % | load avg | holds |
|---|---|---|---|---|---|---|---|---|
{rows}

What the stage does once for all its viewers, CPU ms per frame on one core (process time, a
speaking face, {fps} fps video and 20 ms Opus packets):

| step | CPU ms |
|---|---|
{component_rows}

Encoding per viewer instead (what a session per viewer would do) would add about
{per_viewer_encode:.0f} ms of CPU per viewer per second ({per_viewer_encode / 10:.1f} % of a core) for VP8
and Opus alone, on top of the sending cost measured above.

{h.machine_line()}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="1,25,50,100,150,200", help="viewer counts to measure, ascending")
    parser.add_argument("--window", type=float, default=6.0, help="seconds measured at each step")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the joins before measuring")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument(
        "--quiet", type=float, default=30.0,
        help=f"wait up to this many seconds before each window for other jobs to use < {QUIET_OTHERS:.0f}%% of a core",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    try:
        steps = sorted({int(s) for s in args.steps.split(",") if s.strip()})
    except ValueError:
        print("--steps must be comma-separated integers", file=sys.stderr)
        raise SystemExit(2) from None
    if not steps or steps[0] < 1 or args.window <= 0 or args.workers < 1:
        print("--steps must be positive, --window > 0, --workers >= 1", file=sys.stderr)
        raise SystemExit(2)
    components = component_costs()
    print("CPU ms per frame: " + ", ".join(f"{k} {v:.2f}" for k, v in components.items()), flush=True)
    results, _ = run(steps, args.window, args.settle, args.workers, args.quiet)
    command = ".venv/bin/python bench/bench_viewers.py " + " ".join(sys.argv[1:])
    text = section(results, command.strip(), args.workers, components)
    print(text)
    if not args.no_write:
        write_section("viewers", text)


if __name__ == "__main__":
    main()
