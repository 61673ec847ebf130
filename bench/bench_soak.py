"""Soak benchmark: hold N concurrent sessions for minutes and watch for late frames, drops and growth.

    .venv/bin/python bench/bench_soak.py [--sessions N] [--minutes 10] [--speak-every 20] [--codec VP8]
                                         [--no-write]

A real server process (``avatar serve``, echo driver) and N aiortc customers in this process
(null decoders: they count frames without decoding them, as a browser decodes on the customer's
machine). The default N is the largest number of speaking sessions that held >= 24 fps with VP8
in the capacity section of ``BENCHMARKS.md`` (``bench_call.py capacity --codec VP8``): the soak's
sessions speak from time to time, and at any moment several may speak at once. Each customer
types a numbered line (so the TTS sentence cache never helps) every ``--speak-every`` seconds
(0.5x to 1.5x at random, seeded), which the echo driver says back: a few seconds of speech each.

Measured over the run, after every session is connected and receiving:

* late frames: the server's ``avatar_frames_late`` (``GET /metrics``; each count is one skip
  ahead of frames that were due before they could be rendered), frames the customers never
  received (gaps in the RTP timestamps), and frames whose arrival lags their timestamp: each
  video frame's last packet is timed on arrival (``ReceiveProbe``, before aiortc's receive
  buffer) and compared with its RTP timestamp, which is the stage-clock time the frame shows;
  the smallest such lag of each session is its transit time, and a frame lagging more than
  that by 40 ms (one frame period) or 100 ms counts as late;
* frames per second of each session over the whole run (min / median) and its worst minute,
  the longest gap between two frames;
* the server's resident memory, threads, open fds and asyncio tasks (``avatar_asyncio_tasks``)
  every 30 s, and their growth from the first to the last sample;
* sessions that dropped: a customer whose connection is no longer ``connected``, or a server
  whose ``/healthz`` counts fewer sessions than were opened.

Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:soak -->`` and ``<!-- /bench:soak -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402

from bench._harness import (  # noqa: E402
    CpuWindow,
    Customer,
    ReceiveProbe,
    ServerProcess,
    StreamLog,
    bounded,
    http_session,
    live_sessions,
    loopback_ice_only,
    machine_line,
    null_decoders,
    proc_status,
    scrape,
)
from bench._report import BENCHMARKS, write_section  # noqa: E402

SAMPLE_EVERY = 30.0  # seconds between snapshots of the server process
VIDEO_RATE = 90_000
FRAME_PERIOD = 1 / 25
LATE_THRESHOLDS = (0.040, 0.100)  # seconds of lag beyond a session's transit time
VOICED_DBOV = -60  # an audio packet at or above this level carries voice


def default_sessions(path: Path = BENCHMARKS) -> tuple[int, str]:
    """The largest N at which every speaking session held >= 24 fps with VP8, from the VP8 capacity
    section of BENCHMARKS.md, and where it came from."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = re.search(r"<!-- bench:call-capacity-vp8 -->(.*?)<!-- /bench:call-capacity-vp8 -->", text, re.S)
    found = re.search(r"Largest N at >= 24 fps per session: speaking (\d+)", section.group(1)) if section else None
    if found is None:
        return 4, "no VP8 capacity figure in BENCHMARKS.md: 4"
    return int(found.group(1)), "the VP8 capacity section of BENCHMARKS.md (speaking sessions at >= 24 fps)"


# -- what the server process looks like ---------------------------------------------------------
@dataclass
class Sample:
    at: float  # seconds since the measured window began
    rss_mib: float
    threads: int
    fds: int
    tasks: int | None
    live: int
    video_sent: float = 0.0  # avatar_frames_sent{kind="video"} so far
    late: float = 0.0  # avatar_frames_late so far
    server_cpu: float | None = None  # % of one core since the previous sample
    others_cpu: float | None = None  # every other process on the machine, % of one core


LATE_KEY = "avatar_frames_late_total"
SENT_KEY = 'avatar_frames_sent_total{kind="video"}'


async def sample(http: aiohttp.ClientSession, server: ServerProcess, at: float) -> Sample:
    rss, threads, fds = proc_status(server.pid)
    metrics = await scrape(http, server)
    tasks = metrics.get("avatar_asyncio_tasks")
    return Sample(
        at, rss, threads, fds, int(tasks) if tasks is not None else None, await live_sessions(http, server),
        metrics.get(SENT_KEY, 0.0), metrics.get(LATE_KEY, 0.0),
    )


# -- what each customer received ------------------------------------------------------------------
@dataclass
class SessionFigures:
    fps: float
    worst_minute_fps: float
    frames: int
    missing: int  # frames never received (gaps in the timestamps)
    late: dict[float, int]  # threshold -> frames lagging more than that beyond the transit time
    lag_p99: float  # seconds beyond the transit time
    lag_max: float
    longest_gap: float  # seconds between two frames' arrivals
    voiced: float  # share of audio packets with voice
    lines: int
    connected: bool


def unwrapped(timestamps: list[int]) -> np.ndarray:
    """RTP timestamps in arrival order with 32-bit wrap-arounds undone."""
    out = np.empty(len(timestamps), dtype=np.int64)
    offset = 0
    previous = None
    for i, ts in enumerate(timestamps):
        if previous is not None:
            step = ts - previous
            if step < -(1 << 31):
                offset += 1 << 32
            elif step > 1 << 31:
                offset -= 1 << 32
        previous = ts
        out[i] = ts + offset
    return out


def figures(video: StreamLog, audio: StreamLog, t0: float, t1: float, lines: int, connected: bool) -> SessionFigures:
    ts_all = unwrapped(list(video.frame_arrival))
    arrival_all = np.array(list(video.frame_arrival.values()))
    keep = (arrival_all >= t0) & (arrival_all <= t1)
    ts, arrival = ts_all[keep], arrival_all[keep]
    span = t1 - t0
    if len(ts) < 2:
        return SessionFigures(0.0, 0.0, len(ts), 0, dict.fromkeys(LATE_THRESHOLDS, 0), 0.0, 0.0, span, 0.0, lines,
                              connected)
    order = np.argsort(ts)
    steps = np.diff(ts[order])
    period = VIDEO_RATE * FRAME_PERIOD
    missing = int(np.sum(np.maximum(np.round(steps / period) - 1, 0)))
    lag = arrival - ts / VIDEO_RATE
    excess = lag - lag.min()
    late = {threshold: int(np.sum(excess > threshold)) for threshold in LATE_THRESHOLDS}
    minutes = [
        np.sum((arrival >= start) & (arrival < start + 60.0)) / 60.0 for start in np.arange(t0, t1 - 59.0, 60.0)
    ]
    gaps = np.diff(np.sort(np.concatenate(([t0], arrival, [t1]))))
    levels = [level for _, at, level in audio.levels if t0 <= at <= t1]
    voiced = sum(1 for level in levels if level >= VOICED_DBOV) / len(levels) if levels else 0.0
    return SessionFigures(
        fps=len(ts) / span,
        worst_minute_fps=float(min(minutes)) if minutes else len(ts) / span,
        frames=len(ts),
        missing=missing,
        late=late,
        lag_p99=float(np.percentile(excess, 99)),
        lag_max=float(excess.max()),
        longest_gap=float(gaps.max()),
        voiced=voiced,
        lines=lines,
        connected=connected,
    )


# -- the run ---------------------------------------------------------------------------------------
@dataclass
class Result:
    sessions: int
    seconds: float
    per_session: list[SessionFigures]
    samples: list[Sample]
    late_server: int
    video_sent: int
    server_cpu: float
    others_cpu: float
    after_close: Sample | None
    dropped: list[str] = field(default_factory=list)


async def speak_now_and_then(customer: Customer, index: int, every: float, stop: float, rng: random.Random) -> int:
    """Type a numbered line every ``every`` seconds (0.5x to 1.5x) until ``stop``; return how many."""
    said = 0
    while True:
        await asyncio.sleep(every * rng.uniform(0.5, 1.5))
        if time.monotonic() >= stop:
            return said
        said += 1
        customer.send_text(
            f"Customer {index + 1}, line {said}: I would like to check the balance of my savings "
            f"account and the last {said + 2} payments, please."
        )


async def run(sessions: int, minutes: float, every: float, codec: str) -> Result:
    loopback_ice_only()
    rng = random.Random(8)
    probe = ReceiveProbe()
    with ServerProcess(max_sessions=sessions + 4) as server, null_decoders(), probe:
        async with http_session() as http:
            customers = [Customer(codec=codec, probe=probe) for _ in range(sessions)]
            try:
                for customer in customers:  # one at a time: answering an offer costs the server a moment
                    await bounded(customer.connect(http, server.url), 60.0, "connecting a customer")
                for _ in range(150):  # at most 30 s for every session's first 50 frames
                    if min(c.frames["video"] for c in customers) >= 50:
                        break
                    await asyncio.sleep(0.2)
                # Every session says one line first: the TTS pool, its voices and the lip-sync come
                # into being before the window, so growth in it is growth, not first use.
                since = time.monotonic()
                for i, c in enumerate(customers):
                    c.send_text(f"Customer {i + 1} is warming up the voice.")
                for c in customers:
                    await c.wait_event(lambda e: e.get("type") == "transcript" and e.get("speaker") == "avatar",
                                       within=120.0, since=since)
                await asyncio.sleep(2.0)
                window = CpuWindow({"server": server.pid})
                window.start()
                before = await scrape(http, server)
                t0 = time.monotonic()
                stop = t0 + minutes * 60.0
                speakers = [
                    asyncio.create_task(speak_now_and_then(c, i, every, stop, random.Random(rng.random())))
                    for i, c in enumerate(customers)
                ]
                samples = [await sample(http, server, 0.0)]
                dropped: list[str] = []
                while time.monotonic() < stop:
                    interval = CpuWindow({"server": server.pid})
                    interval.start()
                    await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, stop - time.monotonic())))
                    used = interval.stop()
                    s = await sample(http, server, time.monotonic() - t0)
                    s.server_cpu, s.others_cpu = used["server"], used["others"]
                    samples.append(s)
                    states = [c.pc.connectionState for c in customers]
                    print(
                        f"{s.at / 60:5.1f} min: RSS {s.rss_mib:.1f} MiB, {s.threads} threads, {s.fds} fds, "
                        f"{s.tasks} tasks, {s.live} live, customers {states.count('connected')}/{sessions} "
                        f"connected, frames {[c.frames['video'] for c in customers]}",
                        flush=True,
                    )
                t1 = time.monotonic()
                cpu = window.stop()
                after = await scrape(http, server)
                lines = await asyncio.gather(*speakers)
                for i, c in enumerate(customers):
                    if c.pc.connectionState != "connected":
                        dropped.append(f"customer {i + 1}: connection {c.pc.connectionState}")
                if samples[-1].live < sessions:
                    dropped.append(f"the server counted {samples[-1].live} live sessions of {sessions}")
                per_session = []
                for i, c in enumerate(customers):
                    assert c.video_log is not None and c.audio_log is not None
                    per_session.append(
                        figures(c.video_log, c.audio_log, t0, t1, lines[i], c.pc.connectionState == "connected")
                    )
            finally:
                await asyncio.gather(*(c.close() for c in customers), return_exceptions=True)
            # Once every customer has gone, the server should be back where an idle server is.
            after_close: Sample | None = None
            for _ in range(120):  # at most 60 s for the server to notice every peer closing
                if not await live_sessions(http, server):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(3.0)
            after_close = await sample(http, server, time.monotonic() - t0)
    return Result(
        sessions=sessions,
        seconds=t1 - t0,
        per_session=per_session,
        samples=samples,
        late_server=int(after.get(LATE_KEY, 0) - before.get(LATE_KEY, 0)),
        video_sent=int(after.get(SENT_KEY, 0) - before.get(SENT_KEY, 0)),
        server_cpu=cpu["server"],
        others_cpu=cpu["others"],
        after_close=after_close,
        dropped=dropped,
    )


def slope_per_minute(samples: list[Sample], value: str) -> float:
    xs = np.array([s.at / 60.0 for s in samples])
    ys = np.array([float(getattr(s, value) or 0) for s in samples])
    if len(xs) < 2 or np.ptp(xs) == 0:
        return 0.0
    return float(np.polyfit(xs, ys, 1)[0])


def section(r: Result, minutes: float, every: float, codec: str, source: str, command: str) -> str:
    def pct(values: list[float]) -> str:
        return f"{min(values):.1f} / {float(np.median(values)):.1f}"

    rows = "\n".join(
        f"| {i + 1} | {f.fps:.2f} | {f.worst_minute_fps:.2f} | {f.frames} | {f.missing} | {f.late[0.040]} | "
        f"{f.late[0.100]} | {f.lag_p99 * 1000:.0f} | {f.lag_max * 1000:.0f} | {f.longest_gap * 1000:.0f} | "
        f"{f.voiced:.0%} | {f.lines} | {'yes' if f.connected else '**no**'} |"
        for i, f in enumerate(r.per_session)
    )
    first, last = r.samples[0], r.samples[-1]
    rows_by_sample = []
    for prev, s in zip([None, *r.samples[:-1]], r.samples, strict=True):
        if prev is None or s.at <= prev.at:
            rate = late = cpu = others = ""
        else:
            rate = f"{(s.video_sent - prev.video_sent) / (s.at - prev.at) / max(r.sessions, 1):.1f}"
            late = f"{s.late - prev.late:.0f}"
            cpu = f"{s.server_cpu:.0f}%" if s.server_cpu is not None else ""
            others = f"{s.others_cpu:.0f}%" if s.others_cpu is not None else ""
        tasks = s.tasks if s.tasks is not None else "n/a"
        rows_by_sample.append(
            f"| {s.at / 60:.1f} | {s.rss_mib:.1f} | {s.threads} | {s.fds} | {tasks} | {s.live} | {rate} | {late} "
            f"| {cpu} | {others} |"
        )
    samples = "\n".join(rows_by_sample)
    task_delta = "n/a" if first.tasks is None or last.tasks is None else f"{last.tasks - first.tasks:+d}"
    frames = sum(f.frames for f in r.per_session)
    late40 = sum(f.late[0.040] for f in r.per_session)
    late100 = sum(f.late[0.100] for f in r.per_session)
    missing = sum(f.missing for f in r.per_session)
    closed = r.after_close
    closed_line = (
        f"After every customer had left: {closed.live} live sessions, RSS {closed.rss_mib:.1f} MiB, "
        f"{closed.threads} threads, {closed.fds} fds, {closed.tasks} asyncio tasks."
        if closed is not None
        else ""
    )
    dropped = "; ".join(r.dropped) if r.dropped else "none"
    fps = [f.fps for f in r.per_session]
    worst = [f.worst_minute_fps for f in r.per_session]
    return f"""### Soak: {r.sessions} sessions held for {minutes:g} minutes

Command: `{command}` ({machine_line()}; several engineers share this 2-core machine, so other
jobs take CPU from the server at times: *other jobs* below).

`avatar serve` in a child process (echo driver, 512x512 at 25 fps, Piper, video codec {codec});
{r.sessions} aiortc customers in this process (N from {source}) whose receivers decode nothing. Each
customer types a numbered line every {every:g} s (0.5x-1.5x at random) and the avatar says it back,
so the sessions speak from time to time, sometimes several at once. Measured over {r.seconds / 60:.1f}
minutes once every session was receiving; server CPU {r.server_cpu:.0f}% of one core, other jobs
{r.others_cpu:.0f}% of one core (mean over the run).

**Late frames: the server skipped ahead {r.late_server} times (`avatar_frames_late`) in {r.video_sent}
video frames sent; the customers received {frames} frames, {missing} never arrived, {late40} arrived
more than 40 ms and {late100} more than 100 ms later than their session's transit time. fps per
session (whole run) min / median {pct(fps)}, worst minute min / median {pct(worst)}. Sessions
dropped: {dropped}.**

| session | fps | worst minute fps | frames | never arrived | late > 40 ms | late > 100 ms | lag p99 (ms) | lag max (ms) | longest gap (ms) | voiced audio | lines said | connected at the end |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

*lag*: a frame's arrival minus its RTP timestamp (the stage-clock time it shows), less the
smallest such value of its session (the transit time). *never arrived*: gaps in the RTP
timestamps (frames the server skipped, or lost packets). *voiced audio*: audio packets at or
above {VOICED_DBOV} dBov (RFC 6464 level), i.e. the share of the time the avatar spoke.

The server process every {SAMPLE_EVERY:g} s (minutes since the window began; the last four
columns cover the interval since the row before: video frames sent per session per second,
skips ahead, the server's CPU and every other process's, in % of one core):

| minute | RSS (MiB) | threads | open fds | asyncio tasks | live sessions | fps sent | late | server CPU | other jobs |
|---|---|---|---|---|---|---|---|---|---|
{samples}

Growth from the first to the last sample: RSS {last.rss_mib - first.rss_mib:+.1f} MiB (fit
{slope_per_minute(r.samples, "rss_mib"):+.2f} MiB/min), threads {last.threads - first.threads:+d}, fds
{last.fds - first.fds:+d}, asyncio tasks {task_delta}. {closed_line}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=None, help="default: from BENCHMARKS.md (VP8 capacity)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--speak-every", type=float, default=20.0, help="mean seconds between a customer's lines")
    parser.add_argument("--codec", default="VP8", choices=("VP8", "H264"))
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = parser.parse_args()
    sessions, source = default_sessions()
    if args.sessions is not None:
        sessions, source = args.sessions, "--sessions"
    if sessions < 1 or args.minutes <= 0 or args.speak_every <= 0:
        print("bench_soak: --sessions must be at least 1, --minutes and --speak-every positive", file=sys.stderr)
        return 2
    extra = [f"--minutes {args.minutes:g}"]
    if args.sessions is not None:
        extra.append(f"--sessions {args.sessions}")
    if args.speak_every != 20.0:
        extra.append(f"--speak-every {args.speak_every:g}")
    if args.codec != "VP8":
        extra.append(f"--codec {args.codec}")
    command = " ".join([".venv/bin/python bench/bench_soak.py", *extra])
    result = asyncio.run(bounded(run(sessions, args.minutes, args.speak_every, args.codec),
                                 args.minutes * 60.0 + 300.0, "the soak run"))
    body = section(result, args.minutes, args.speak_every, args.codec, source, command)
    print(body)
    if not args.no_write:
        write_section("soak", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
