"""Shared helpers for the live-call benchmarks (``bench/bench_call.py``).

Two ways to run the real server, each for a reason:

* ``InProcessServer``: the real aiohttp app (``create_app``) on a loopback port through
  ``AppRunner``/``TCPSite``, in the benchmark's own event loop. Latency and A/V sync use it
  because their breakdowns need the server's objects (the stage, its clock, the TTS
  registry) to timestamp each step and to read the ground truth, which a subprocess hides.
  One session and one customer cost little, so sharing the loop does not distort them.
* ``ServerProcess``: ``avatar serve`` in a child process. Capacity uses it so the server's
  CPU is measured apart from the customers', and the customers' packet handling does not
  steal the server's event loop or its GIL.

``Customer`` is an aiortc peer that receives the avatar's audio and video like the page
does. ``ReceiveProbe`` timestamps RTP packets and RTCP sender reports as they arrive, before
aiortc's receiver buffers them: aiortc holds audio back four packets (``prefetch=4``) and
releases a video frame only when the next frame's first packet arrives, delays a browser
does not add. ``install_null_decoders`` swaps aiortc's decoders for ones that only pass the
timestamp on, because a real browser decodes on the customer's machine, not the server's.

Every helper ends what it starts: servers, peers and tasks are closed in ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import av  # noqa: E402
import numpy as np  # noqa: E402
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

LOOPBACK = "127.0.0.1"
T = TypeVar("T")
NTP_EPOCH_OFFSET = 2_208_988_800  # seconds from 1900 (NTP) to 1970 (Unix)

# Python run in the server child: SIGTERM when the benchmark dies (no orphan server, even
# after a SIGKILL), ICE host candidates on loopback only (aioice never offers 127.0.0.1 by
# itself), then the real ``avatar serve`` command line.
_SERVE_BOOTSTRAP = (
    "import ctypes, signal, sys, aioice.ice as ice\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "ice.get_host_addresses = lambda use_ipv4, use_ipv6: ['127.0.0.1']\n"
    "from avatar.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def loopback_ice_only() -> None:
    """Make this process's ICE agents offer only 127.0.0.1, so media never leaves loopback."""
    import aioice.ice as ice

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [LOOPBACK] if use_ipv4 else []

    ice.get_host_addresses = host_addresses


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


# -- statistics ---------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else math.nan


def p95(values: Sequence[float]) -> float:
    return float(np.percentile(values, 95)) if values else math.nan


def ms(seconds: float) -> str:
    return "n/a" if not math.isfinite(seconds) else f"{seconds * 1000:.0f}"


# -- CPU accounting ----------------------------------------------------------------------
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads), from ``/proc``."""
    return process_cpu_seconds_path(Path(f"/proc/{pid}/stat"))


def process_cpu_seconds_path(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process or one thread)."""
    fields = stat.read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


@dataclass
class CpuWindow:
    """CPU used by some processes and by the whole machine over a window of wall time."""

    pids: dict[str, int]
    wall0: float = 0.0
    proc0: dict[str, float] = field(default_factory=dict)
    machine0: tuple[float, float] = (0.0, 0.0)

    def start(self) -> None:
        self.wall0 = time.monotonic()
        self.proc0 = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}
        self.machine0 = machine_cpu_seconds()

    def stop(self) -> dict[str, float]:
        """Percent of one core per process (200 = two cores busy), and ``machine`` busy percent
        of all cores (everything running on the machine, other jobs included)."""
        wall = time.monotonic() - self.wall0
        out = {
            name: 100.0 * (process_cpu_seconds(pid) - self.proc0[name]) / wall
            for name, pid in self.pids.items()
        }
        busy, total = machine_cpu_seconds()
        out["machine"] = 100.0 * (busy - self.machine0[0]) / max(total - self.machine0[1], 1e-9)
        # What every other process took, in % of one core: the contention on a shared machine.
        ours = sum(out[name] for name in self.pids)
        out["others"] = max(0.0, out["machine"] * (os.cpu_count() or 1) - ours)
        return out


async def wait_for_quiet(pids: dict[str, int], limit: float, most: float, probe: float = 2.0) -> float:
    """Wait (at most ``most`` seconds) until processes other than ``pids`` use under ``limit``
    percent of one core over a ``probe``-second sample; return what they used last."""
    deadline = time.monotonic() + most
    while True:
        window = CpuWindow(pids)
        window.start()
        await asyncio.sleep(probe)
        others = window.stop()["others"]
        if others < limit or time.monotonic() >= deadline:
            return others


def machine_line() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end of the run "
        f"(shared machine: other jobs add noise); Python {platform.python_version()}"
    )


# -- servers -------------------------------------------------------------------------------
class InProcessServer:
    """The real app on ``127.0.0.1:<free port>`` in this event loop; ``async with`` it.

    ``settings_overrides`` go to ``load_settings`` (the environment is ignored, so a stray
    ``AVATAR_*`` variable cannot change a benchmark). The driver is the echo driver unless
    overridden: the benchmarks time the speech path, not the dialogue brain. Exposes the
    app's engines and session manager for instrumentation.
    """

    def __init__(self, **settings_overrides: Any) -> None:
        self._overrides = {"driver": "echo", **settings_overrides}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._runner: Any = None
        self._engines: Any = None
        self.token = secrets.token_hex(16)
        self.port = 0
        self.app: Any = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def sessions(self) -> Any:
        from avatar.server.app import SESSIONS

        return self.app[SESSIONS]

    @property
    def engines(self) -> Any:
        return self._engines

    async def __aenter__(self) -> InProcessServer:
        from aiohttp import web

        from avatar.config import load_settings
        from avatar.server.app import create_app
        from avatar.server.engines import Engines

        loopback_ice_only()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-call-")
        learnt = ROOT / "data" / "cache" / "brain"
        if self._overrides.get("driver") == "brain" and learnt.is_dir():
            # The brain the repository's own server (or bench_brain) has learnt, instead of
            # learning it again for minutes: the model files are keyed by the knowledge base.
            shutil.copytree(learnt, Path(self._tmp.name) / "cache" / "brain")
        settings = load_settings(
            env={}, overrides={"data_dir": Path(self._tmp.name), "api_token": self.token, **self._overrides}
        )
        self._engines = Engines.build(settings)
        self.app = create_app(settings, engines=self._engines)
        self.port = free_port()
        self._runner = web.AppRunner(self.app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()  # closes every session and peer (cleanup_ctx)
        finally:
            if self._engines is not None:
                self._engines.close()
            if self._tmp is not None:
                self._tmp.cleanup()


class ServerProcess:
    """``avatar serve`` as a child process on a free loopback port; ``with`` it.

    Started with ``AVATAR_*`` variables for the token, data directory, session limit and the
    echo driver (every session says its customer's text back: the speech path, no brain);
    stopped with SIGTERM (aiohttp's graceful shutdown closes every peer), then SIGKILL if it
    has not exited within ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        max_sessions: int = 256,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.max_sessions = max_sessions
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_env = dict(env or {})  # more AVATAR_* settings (they win over the defaults above)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the server process is not running")
        return self.proc.pid

    @property
    def data_dir(self) -> Path:
        """The server's data directory (its SQLite store); removed when the server is stopped."""
        if self._tmp is None:
            raise RuntimeError("the server process has not been started")
        return Path(self._tmp.name)

    def __enter__(self) -> ServerProcess:
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
        env = {
            **os.environ,
            "AVATAR_DATA_DIR": self._tmp.name,
            "AVATAR_API_TOKEN": self.token,
            "AVATAR_MAX_SESSIONS": str(self.max_sessions),
            "AVATAR_MAX_SESSIONS_PER_CLIENT": str(self.max_sessions),  # every bench customer is on 127.0.0.1
            "AVATAR_LOG_LEVEL": "WARNING",
            "AVATAR_DRIVER": "echo",
            "HF_HUB_OFFLINE": "1",
            **self.extra_env,
        }
        self._log = open(Path(self._tmp.name) / "server.log", "w+b")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_BOOTSTRAP, "serve", "--host", LOOPBACK, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(
            f"the server did not answer /healthz within {self.start_timeout:g} s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        text: str = self._log.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5.0)
        finally:
            if self._log is not None:
                self._log.close()
            if self._tmp is not None:
                self._tmp.cleanup()


# -- what arrives at a customer ---------------------------------------------------------------
@dataclass
class SenderReport:
    arrival: float  # time.monotonic() when it arrived
    ntp: float  # the sender's wall clock when it sent its latest packet (Unix seconds)
    rtp: int  # that packet's RTP timestamp


@dataclass
class StreamLog:
    """Packets of one received stream, timed on arrival (before any receive buffer)."""

    kind: str
    clock_rate: int
    ssrc: int | None = None
    frame_arrival: dict[int, float] = field(default_factory=dict)  # RTP ts -> its last packet's arrival
    frame_bytes: dict[int, int] = field(default_factory=dict)
    # Audio: (RTP ts, arrival, level in dBov) from the RFC 6464 header aiortc's sender computes
    # from each frame's samples before encoding, so codec artefacts cannot move an onset.
    levels: list[tuple[int, float, int]] = field(default_factory=list)
    sender_reports: list[SenderReport] = field(default_factory=list)
    packets: int = 0

    def on_packet(
        self, ssrc: int, timestamp: int, payload: int, arrival: float, level: int | None = None
    ) -> None:
        if self.ssrc is None:
            self.ssrc = ssrc
        elif ssrc != self.ssrc:
            return  # a retransmission stream (RTX): the original arrival is what counts
        self.packets += 1
        self.frame_arrival[timestamp] = arrival
        self.frame_bytes[timestamp] = self.frame_bytes.get(timestamp, 0) + payload
        if level is not None:
            self.levels.append((timestamp, arrival, level))

    def sender_time(self, rtp: int) -> float | None:
        """The sender's wall-clock time for RTP timestamp ``rtp`` through the latest sender
        report (what a browser syncs audio and video with); ``None`` before the first one."""
        if not self.sender_reports:
            return None
        sr = self.sender_reports[-1]
        delta = (rtp - sr.rtp + (1 << 31)) % (1 << 32) - (1 << 31)
        return sr.ntp + delta / self.clock_rate


class ReceiveProbe:
    """Timestamps RTP packets and RTCP sender reports of watched receivers on arrival.

    Patches ``RTCRtpReceiver._handle_rtp_packet``/``_handle_rtcp_packet`` for the life of the
    ``with`` block (a benchmark-only hook; unwatched receivers pass straight through).
    """

    def __init__(self) -> None:
        self.logs: dict[int, StreamLog] = {}
        self._saved: tuple[Any, Any] | None = None

    def watch(self, receiver: RTCRtpReceiver, kind: str) -> StreamLog:
        log = StreamLog(kind, 48_000 if kind == "audio" else 90_000)
        self.logs[id(receiver)] = log
        return log

    def __enter__(self) -> ReceiveProbe:
        from aiortc.rtp import RtcpSrPacket

        rtp_orig = RTCRtpReceiver._handle_rtp_packet
        rtcp_orig = RTCRtpReceiver._handle_rtcp_packet
        logs = self.logs

        async def on_rtp(receiver: RTCRtpReceiver, packet: Any, arrival_time_ms: int) -> None:
            log = logs.get(id(receiver))
            if log is not None:
                level = packet.extensions.audio_level  # (voice activity, -dBov) or None
                log.on_packet(
                    packet.ssrc,
                    packet.timestamp,
                    len(packet.payload),
                    time.monotonic(),
                    -level[1] if level is not None else None,
                )
            await rtp_orig(receiver, packet, arrival_time_ms)

        async def on_rtcp(receiver: RTCRtpReceiver, packet: Any) -> None:
            log = logs.get(id(receiver))
            if log is not None and isinstance(packet, RtcpSrPacket) and packet.ssrc == log.ssrc:
                info = packet.sender_info
                ntp = (
                    (info.ntp_timestamp >> 32) + (info.ntp_timestamp & 0xFFFFFFFF) / 2**32 - NTP_EPOCH_OFFSET
                )
                log.sender_reports.append(SenderReport(time.monotonic(), ntp, info.rtp_timestamp))
            await rtcp_orig(receiver, packet)

        self._saved = (rtp_orig, rtcp_orig)
        setattr(RTCRtpReceiver, "_handle_rtp_packet", on_rtp)  # noqa: B010
        setattr(RTCRtpReceiver, "_handle_rtcp_packet", on_rtcp)  # noqa: B010
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            setattr(RTCRtpReceiver, "_handle_rtp_packet", self._saved[0])  # noqa: B010
            setattr(RTCRtpReceiver, "_handle_rtcp_packet", self._saved[1])  # noqa: B010
            self._saved = None


def rtp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The RTP timestamp aiortc's receiver maps to pts 0 (decoded pts + origin = RTP ts)."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    if mapper is None or not hasattr(mapper, "_origin"):
        raise RuntimeError(
            "this aiortc version has no RTCRtpReceiver timestamp mapper: update bench/_harness.py"
        )
    origin: int | None = mapper._origin
    return origin


class _NullDecoder:
    """Stands in for a codec: yields one tiny frame per encoded frame, carrying its timestamp
    and its size in ``frame.opaque``, so a customer counts frames without paying to decode."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def decode(self, encoded_frame: Any) -> list[av.frame.Frame]:
        frame: av.frame.Frame
        if self.kind == "audio":
            frame = av.AudioFrame(format="s16", layout="mono", samples=1)
        else:
            frame = av.VideoFrame(width=2, height=2, format="yuv420p")
        frame.pts = encoded_frame.timestamp
        frame.opaque = len(encoded_frame.data)
        return [frame]


@contextlib.contextmanager
def null_decoders() -> Iterator[None]:
    """aiortc receivers created inside the block decode nothing (see ``_NullDecoder``)."""
    import aiortc.rtcrtpreceiver as receiver_module

    original = receiver_module.get_decoder

    def get_decoder(codec: Any) -> Any:
        return _NullDecoder("audio" if codec.mimeType.lower().startswith("audio/") else "video")

    receiver_module.get_decoder = get_decoder
    try:
        yield
    finally:
        receiver_module.get_decoder = original


# -- the customer ------------------------------------------------------------------------------
FrameHook = Callable[[str, av.frame.Frame, float], None]


class Customer:
    """A WebRTC customer like the page: receives audio and video, opens the ``events`` channel.

    ``on_frame(kind, frame, received_at)`` is called for every decoded frame (``received_at`` is
    ``time.monotonic()``, which is also the server's clock source on this machine). With a
    ``probe``, the customer's receivers are watched and ``audio_log``/``video_log`` are set.
    ``codec`` ("H264", "VP8" or ``None`` for aiortc's own order, VP8 first like Chrome's offer)
    is put first in the offer: today the server's answer keeps the offer's order.
    """

    def __init__(
        self, on_frame: FrameHook | None = None, probe: ReceiveProbe | None = None, codec: str | None = "H264"
    ) -> None:
        # aiortc's default bundle policy: an aiortc offerer with max-bundle never opens its
        # data channel against this server (the page, a browser, bundles by itself).
        self.pc = RTCPeerConnection()
        self.on_frame = on_frame
        self.session_id = ""
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.frames = {"audio": 0, "video": 0}
        self.channel = self.pc.createDataChannel("events")
        self.channel_open = asyncio.Event()
        self._event_arrived = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        audio = self.pc.addTransceiver("audio", direction="recvonly")
        video = self.pc.addTransceiver("video", direction="recvonly")
        if codec is not None:
            # The customer's codec order decides what the server sends (see ``video_codec``).
            capabilities = RTCRtpReceiver.getCapabilities("video")
            codecs = capabilities.codecs if capabilities else []
            first = [c for c in codecs if c.mimeType.lower() == f"video/{codec.lower()}"]
            if not first:
                raise ValueError(f"unknown video codec {codec!r}")
            video.setCodecPreferences(first + [c for c in codecs if c not in first])
        self.audio_receiver = audio.receiver
        self.video_receiver = video.receiver
        self.audio_log = probe.watch(audio.receiver, "audio") if probe else None
        self.video_log = probe.watch(video.receiver, "video") if probe else None

        @self.channel.on("open")
        def _open() -> None:
            self.channel_open.set()

        @self.channel.on("message")
        def _message(message: str | bytes) -> None:
            self.events.append((time.monotonic(), json.loads(message)))
            self._event_arrived.set()

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.create_task(self._consume(track), name=f"customer-{track.kind}"))

    async def connect(self, http: aiohttp.ClientSession, base_url: str, avatar: str | None = None) -> str:
        """Offer, get the answer from ``POST /api/offer``, wait for the data channel to open."""
        await self.pc.setLocalDescription(await self.pc.createOffer())
        body: dict[str, Any] = {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type}
        if avatar:
            body["avatar"] = avatar
        async with http.post(f"{base_url}/api/offer", json=body) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"offer refused ({resp.status}): {answer.get('error')}")
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.wait_for(self.channel_open.wait(), 30.0)
        self.session_id = answer["session_id"]
        return self.session_id

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames[track.kind] += 1
                if self.on_frame is not None and isinstance(frame, av.frame.Frame):
                    self.on_frame(track.kind, frame, time.monotonic())

    @property
    def video_codec(self) -> str:
        """The video codec the server's answer chose (its first payload type), e.g. "H264"."""
        sdp = self.pc.remoteDescription.sdp if self.pc.remoteDescription else ""
        found = re.search(r"^m=video \S+ \S+ (\d+)", sdp, re.M)
        if found is None:
            return "none"
        rtpmap = re.search(rf"^a=rtpmap:{found.group(1)} ([^/\s]+)/", sdp, re.M)
        return rtpmap.group(1) if rtpmap else "unknown"

    def send_text(self, text: str) -> None:
        self.channel.send(json.dumps({"type": "text", "text": text}))

    async def wait_event(
        self, predicate: Callable[[dict[str, Any]], bool], within: float, since: float = 0.0
    ) -> tuple[float, dict[str, Any]]:
        """The first event received after ``since`` (monotonic) that matches ``predicate``."""

        async def scan() -> tuple[float, dict[str, Any]]:
            while True:
                self._event_arrived.clear()
                for at, event in self.events:
                    if at >= since and predicate(event):
                        return at, event
                await self._event_arrived.wait()

        return await asyncio.wait_for(scan(), within)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# -- reading a server process --------------------------------------------------------------------
def proc_status(pid: int) -> tuple[float, int, int]:
    """Resident memory (MiB), threads and open file descriptors of process ``pid``."""
    rss_kib = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return rss_kib / 1024, threads, fds


async def scrape(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, float]:
    """The server's ``GET /metrics``: each sample's value by its name with labels, e.g.
    ``avatar_asyncio_tasks`` or ``avatar_frames_sent_total{kind="video"}``."""
    async with http.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {server.token}"}) as resp:
        text = await resp.text()
        if resp.status != 200:
            raise RuntimeError(f"GET /metrics failed ({resp.status}): {text[:200]}")
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        values[name] = float(value)
    return values


async def asyncio_tasks(http: aiohttp.ClientSession, server: ServerProcess) -> int | None:
    """The server's ``avatar_asyncio_tasks`` gauge, or None where it has none."""
    value = (await scrape(http, server)).get("avatar_asyncio_tasks")
    return int(value) if value is not None else None


async def live_sessions(http: aiohttp.ClientSession, server: ServerProcess) -> int:
    """How many sessions the server counts (``/healthz``)."""
    async with http.get(f"{server.url}/healthz") as resp:
        return int((await resp.json())["sessions"])


def http_session() -> aiohttp.ClientSession:
    """An HTTP client whose every request gives up after 60 s."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60.0))


async def bounded(coro: Coroutine[Any, Any, T], seconds: float, what: str) -> T:
    """Run ``coro``, cancelling it (its ``finally`` blocks close servers and peers) after ``seconds``."""
    try:
        return await asyncio.wait_for(coro, seconds)
    except TimeoutError:
        raise RuntimeError(f"{what} did not finish within {seconds:g} s; stopped") from None


async def post_json(
    http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    """POST to an authenticated API route; raises with the server's message on an error."""
    async with http.post(url, json=body or {}, headers={"Authorization": f"Bearer {token}"}) as resp:
        answer: dict[str, Any] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"POST {url} failed ({resp.status}): {answer.get('error')}")
        return answer


@contextlib.asynccontextmanager
async def customers(count: int, **kwargs: Any) -> AsyncIterator[list[Customer]]:
    """``count`` unconnected customers, all closed on exit."""
    made = [Customer(**kwargs) for _ in range(count)]
    try:
        yield made
    finally:
        await asyncio.gather(*(c.close() for c in made), return_exceptions=True)
