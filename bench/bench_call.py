"""Benchmarks of the live call: reply latency, A/V sync and drift, concurrent sessions.

    .venv/bin/python bench/bench_call.py latency [--turns 24]
    .venv/bin/python bench/bench_call.py avsync [--minutes 2]
    .venv/bin/python bench/bench_call.py capacity [--start 4 --step 4 --max 48] [--profile]
    .venv/bin/python bench/bench_call.py all

Common options: ``--avatar NAME`` (default anna), ``--no-write`` (print only).

* ``latency``: typed text (``{"type": "text"}`` on the data channel; the default echo
  driver says it back) to the first non-silent audio packet at the customer, over short
  and long lines, with the server-side breakdown.
* ``avsync``: the A/V offset of the received stream, from the mouth opening in decoded
  video (pixels of the mouth region) against the decoded audio envelope, by
  cross-correlation, minus the same correlation on the stage's own ground truth; in
  windows, for drift.
* ``capacity``: concurrent 512x512 sessions at >= 24 received fps each, idle and with every
  avatar speaking, stepping N until the rate drops; customers run in this process with
  decoders that decode nothing (a browser decodes on the customer's machine), the server
  in a child process so its CPU is measured on its own.

Each writes its section of ``BENCHMARKS.md`` (``<!-- bench:call-latency -->``,
``<!-- bench:call-avsync -->``, ``<!-- bench:call-capacity -->``, with ``-vp8`` or
``-offer-order`` appended for a capacity sweep with ``--codec``) unless ``--no-write``.
Everything runs on 127.0.0.1 and ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import av
import numpy as np

from avatar.speech.tts.stream import speak_stream
from bench._report import write_section  # _harness put the repository on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMAND = ".venv/bin/python bench/bench_call.py"
AUDIO_RATE = 48_000
AUDIO_FRAME = 960  # 20 ms at 48 kHz: the stage's audio frame grid
# A 20 ms frame is "non-silent" from -60 dBov up (RFC 6465 level, RMS about 33 of 32767):
# the stage sends exact zeros when nothing is said, and Piper's lead-in stays below this.
VOICED_DBOV = -60

SHORT_LINES = (
    "Hello.",
    "Yes, of course.",
    "Thank you.",
    "Good morning!",
    "Sure, one moment please.",
    "Your card is blocked.",
)
LONG_LINES = (
    "I can check your balance, report a lost card, or set up a transfer for you right away.",
    "For your security, please never share your card number or your passcode with anyone, not even with us.",
    "Your transfer has been submitted and it should arrive in the other account within two hours.",
    "Our branches are open from nine in the morning until five in the afternoon, Monday to Friday.",
    "To raise your daily card limit, open the app, choose your card, and tap the limits button.",
    "A replacement card usually arrives within five working days, and your old card stops working today.",
)


# ==================================================================================== latency
@dataclass
class Turn:
    text: str
    kind: str  # "short" | "long" | "first" | "again" (a line said before: the TTS cache has it)
    sent: float  # monotonic, on the customer
    handled: float = math.nan  # the session got the data-channel message
    synth_start: float = math.nan  # first sentence handed to TTS
    synth_end: float = math.nan
    first_sentence: str = ""  # what the TTS was given first (``split_sentences`` may cut a line)
    first_audio: float = math.nan  # its duration, seconds
    synth_cpu: float = math.nan  # CPU time of the synthesis thread for it, seconds
    scheduled: float = math.nan  # placed on the stage timeline
    segment_start: float = math.nan  # when its first sample plays (stage clock, as monotonic)
    voiced_frame: float = math.nan  # play time of the first non-silent 20 ms frame
    arrival: float = math.nan  # that frame's RTP packet reached the customer
    decoded: float = math.nan  # aiortc's receiver handed the decoded frame over

    def steps(self) -> dict[str, float]:
        """Consecutive steps, in seconds; they add up to ``total``."""
        return {
            "data channel": self.handled - self.sent,
            "driver to TTS": self.synth_start - self.handled,
            "TTS first sentence": self.synth_end - self.synth_start,
            "lip-sync + schedule": self.scheduled - self.synth_end,
            "schedule lead": self.segment_start - self.scheduled,
            "TTS lead-in (frame grid)": self.voiced_frame - self.segment_start,
            "send + network": self.arrival - self.voiced_frame,
        }

    @property
    def total(self) -> float:
        return self.arrival - self.sent


def first_voiced_frame(segment_start: int, audio: np.ndarray) -> int | None:
    """Start sample (on the stage's 20 ms frame grid) of the first frame whose level reaches
    ``VOICED_DBOV`` (as aiortc computes it for the RTP header), for ``audio`` placed at
    ``segment_start`` with silence before it."""
    first = (segment_start // AUDIO_FRAME) * AUDIO_FRAME
    pad = segment_start - first
    samples = np.concatenate([np.zeros(pad, np.float64), audio.astype(np.float64)])
    n = len(samples) // AUDIO_FRAME
    if n == 0:
        return None
    rms = np.sqrt(np.mean(samples[: n * AUDIO_FRAME].reshape(n, AUDIO_FRAME) ** 2, axis=1))
    with np.errstate(divide="ignore"):
        dbov = np.round(20.0 * np.log10(rms / 32767.0))
    voiced = np.flatnonzero(dbov >= VOICED_DBOV)
    return first + int(voiced[0]) * AUDIO_FRAME if len(voiced) else None


async def run_latency(turns: int, avatar: str, codec: str | None) -> tuple[list[Turn], dict[str, Any]]:
    """Drive one first turn, then ``turns`` more (half short, half long lines), through one live
    session; the server warms its voices up at start, so the first turn shows what is left cold.
    The TTS cache is emptied before each of those turns (every line is synthesised, as a new
    reply would be); six more turns then repeat lines already said (the cache has them: one
    line to many sessions, or a stock phrase)."""
    rng = random.Random(2)
    plan = [("first", SHORT_LINES[0])]
    for i in range(turns):
        kind, lines = ("short", SHORT_LINES) if i % 2 == 0 else ("long", LONG_LINES)
        plan.append((kind, lines[(i // 2) % len(lines)]))
    plan += [("again", (SHORT_LINES if i % 2 == 0 else LONG_LINES)[i // 2]) for i in range(6)]
    decoded_at: dict[int, float] = {}  # audio pts -> when aiortc handed the decoded frame over

    def on_frame(kind: str, frame: av.frame.Frame, at: float) -> None:
        if isinstance(frame, av.AudioFrame):
            decoded_at[int(frame.pts or 0)] = at

    done: list[Turn] = []
    extra: dict[str, Any] = {}
    async with h.InProcessServer() as server, h.http_session() as http:
        with h.ReceiveProbe() as probe:
            customer = h.Customer(on_frame=on_frame, probe=probe, codec=codec)
            try:
                sid = await customer.connect(http, server.url, avatar)
                extra["codec"] = customer.video_codec
                session = server.sessions.get(sid)
                stage = session.stage
                origin = time.monotonic() - stage.clock.time()  # stage clock time 0, as monotonic
                current: list[Turn] = []

                # The data channel's handler was bound when the customer connected; the text it
                # hands on is turned into a reply by ``customer_text``, looked up at each message.
                customer_text = session.customer_text

                def timed_customer_text(text: str) -> Any:
                    if current and math.isnan(current[-1].handled):
                        current[-1].handled = time.monotonic()
                    return customer_text(text)

                tts = server.engines.tts
                synthesize = tts.synthesize
                # CPU time of each synthesis in its worker thread: what the step costs on an idle
                # core, whatever the other jobs on this shared machine do to the wall time.
                piper = tts.engine("piper")
                blocking = piper.synthesize_blocking
                cpu_of: dict[str, float] = {}

                def cpu_timed_blocking(sentence: str, voice: Any) -> Any:
                    began = time.thread_time()
                    chunk = blocking(sentence, voice)
                    cpu_of[sentence] = time.thread_time() - began
                    return chunk

                async def timed_synthesize(sentence: str, voice: Any) -> Any:
                    start = time.monotonic()
                    chunk = await synthesize(sentence, voice)
                    if current and math.isnan(current[-1].synth_start):
                        turn = current[-1]
                        turn.synth_start, turn.synth_end = start, time.monotonic()
                        turn.first_sentence, turn.first_audio = sentence, float(chunk.duration)
                        turn.synth_cpu = cpu_of.get(sentence, math.nan)
                    return chunk

                schedule = stage.schedule

                def timed_schedule(chunk: Any, mouth: Any) -> Any:
                    seg = schedule(chunk, mouth)
                    turn = current[-1] if current else None
                    if turn is not None and math.isnan(turn.scheduled):
                        turn.scheduled = time.monotonic()
                        turn.segment_start = origin + seg.start / AUDIO_RATE
                        voiced = first_voiced_frame(seg.start, seg.audio)
                        if voiced is not None:
                            turn.voiced_frame = origin + voiced / AUDIO_RATE
                    return seg

                # Instance attributes shadow the methods the server calls (benchmark-only hooks).
                setattr(session, "customer_text", timed_customer_text)  # noqa: B010
                setattr(tts, "synthesize", timed_synthesize)  # noqa: B010
                setattr(piper, "synthesize_blocking", cpu_timed_blocking)  # noqa: B010
                setattr(stage, "schedule", timed_schedule)  # noqa: B010
                await asyncio.sleep(1.5)  # frames flowing, customer's buffers primed

                audio_log = customer.audio_log
                assert audio_log is not None
                voice = tts.voice_for(avatar, "en")
                for kind, text in plan:
                    if kind == "again":
                        # Another session said this line a moment ago: its pieces are cached.
                        async with contextlib.aclosing(speak_stream(tts, text, voice)) as pieces:
                            async for _ in pieces:
                                pass
                    else:
                        tts.clear_cache()
                    turn = Turn(text, kind, time.monotonic())
                    current.append(turn)
                    mark = len(audio_log.levels)
                    customer.send_text(text)
                    deadline = time.monotonic() + 20.0
                    hit: tuple[int, float, int] | None = None
                    while hit is None and time.monotonic() < deadline:
                        await asyncio.sleep(0.005)
                        hit = next((p for p in audio_log.levels[mark:] if p[2] >= VOICED_DBOV), None)
                    if hit is None:
                        raise RuntimeError(f"no voiced audio packet within 20 s of sending {text!r}")
                    turn.arrival = hit[1]
                    origin_rtp = h.rtp_origin(customer.audio_receiver)
                    pts = (hit[0] - (origin_rtp or 0)) % (1 << 32)
                    for _ in range(100):  # aiortc releases it a few packets later
                        if pts in decoded_at:
                            break
                        await asyncio.sleep(0.005)
                    turn.decoded = decoded_at.get(pts, math.nan)
                    done.append(turn)
                    # Hear a little, then cut (the next line waits for an idle avatar either way).
                    await asyncio.sleep(0.3)
                    await h.post_json(http, f"{server.url}/api/sessions/{sid}/interrupt", server.token)
                    await customer.wait_event(
                        lambda e: e.get("type") == "state" and e.get("state") == "idle", 10.0
                    )
                    await asyncio.sleep(rng.uniform(0.3, 0.7))
                extra["voice"] = str(tts.voice_for(avatar, "en"))
                extra["fanout"] = await fanout_first_pieces(tts, voice)
            finally:
                await customer.close()
    return done, extra


FANOUT_SESSIONS = 10


async def fanout_first_pieces(tts: Any, voice: Any) -> list[tuple[str, str, float, float, int]]:
    """One operator line said by ``FANOUT_SESSIONS`` sessions at once (issue 5), against as many
    sessions each saying a line of its own: time until every session has its first piece (the
    TTS side only, on the server of the latency run while its session streams), and how many
    syntheses that took. Each case runs three times (cache emptied first); medians."""
    out: list[tuple[str, str, float, float, int]] = []
    for kind, lines in (("short", SHORT_LINES), ("long", LONG_LINES)):
        for case in ("one line to all", "a line each"):
            medians: list[float] = []
            maxima: list[float] = []
            counts: list[int] = []
            for attempt in range(3):
                tts.clear_cache()
                before = tts.syntheses
                texts = [
                    lines[attempt % len(lines)] if case == "one line to all" else lines[(attempt + i) % len(lines)]
                    for i in range(FANOUT_SESSIONS)
                ]
                if case == "a line each":  # distinct lines: a number makes each one new
                    texts = [f"{text[:-1]}, caller {i + 1}{text[-1]}" for i, text in enumerate(texts)]
                start = time.monotonic()

                async def first_piece(text: str, start: float) -> float:
                    async with contextlib.aclosing(speak_stream(tts, text, voice)) as pieces:
                        await anext(pieces)
                    return time.monotonic() - start

                ready = await asyncio.gather(*(first_piece(text, start) for text in texts))
                medians.append(h.median(ready))
                maxima.append(max(ready))
                counts.append(tts.syntheses - before)
            out.append((kind, case, h.median(medians), h.median(maxima), int(h.median(counts))))
    return out


def latency_section(turns: list[Turn], extra: dict[str, Any], avatar: str, given: str = "") -> str:
    first = [t for t in turns if t.kind == "first"]
    warm = [t for t in turns if t.kind in ("short", "long")]
    again = [t for t in turns if t.kind == "again"]
    lines = [
        "## Live call: typed text to first audio",
        "",
        f"`{COMMAND} latency{given}` (options: `--turns`, `--avatar`, `--codec`, `--no-write`)",
        "",
        f"One live session (avatar {avatar}, {extra.get('codec', '?')} video, Piper `en_US-joe-medium`, the echo driver) on the real app in "
        'this process, an aiortc customer on 127.0.0.1. Each turn sends `{"type": "text"}` on the data '
        "channel and times the first 20 ms audio frame at or above -60 dBov (the level aiortc's sender puts in "
        "each RTP packet's RFC 6464 header, computed from the frame's samples before encoding): its packet's arrival "
        "at the customer (what a browser's jitter buffer gets) and aiortc's decoded frame (after "
        "aiortc's own 4-packet audio prefetch, which a browser does not have). Then the line is cut "
        "with the interrupt API and the next turn follows a pause. The TTS cache is emptied before "
        "every turn but the last six, which repeat lines already said (a cache hit: one operator line "
        "to many sessions, a stock phrase). Times in ms.",
        "",
        "| turns | text to first voiced packet: median | p95 | max | text to aiortc decoded frame: median | p95 |",
        "|---|---|---|---|---|---|",
    ]
    for label, group in (
        (f"all turns after the first ({len(warm)})", warm),
        (f"short lines ({sum(t.kind == 'short' for t in warm)})", [t for t in warm if t.kind == "short"]),
        (f"long lines ({sum(t.kind == 'long' for t in warm)})", [t for t in warm if t.kind == "long"]),
        (f"lines said before: TTS cache hit ({len(again)})", again),
    ):
        if not group:
            continue
        totals = [t.total for t in group]
        decoded = [t.decoded - t.sent for t in group]
        lines.append(
            f"| {label} | {h.ms(h.median(totals))} | {h.ms(h.p95(totals))} | {h.ms(max(totals))} "
            f"| {h.ms(h.median(decoded))} | {h.ms(h.p95(decoded))} |"
        )
    if first:
        lines.append(
            f"| the session's first turn (not in the rows above) | {h.ms(first[0].total)} | | | {h.ms(first[0].decoded - first[0].sent)} | |"
        )
    lines += [
        "",
        "Where the time goes (turns after the first; each step's median and p95, so the medians need not add up exactly):",
        "",
        "| step | short median | short p95 | long median | long p95 |",
        "|---|---|---|---|---|",
    ]
    short = [t.steps() for t in warm if t.kind == "short"]
    long_ = [t.steps() for t in warm if t.kind == "long"]
    for step in Turn("", "", 0.0).steps():
        s = [d[step] for d in short if math.isfinite(d[step])]
        g = [d[step] for d in long_ if math.isfinite(d[step])]
        lines.append(
            f"| {step} | {h.ms(h.median(s))} | {h.ms(h.p95(s))} | {h.ms(h.median(g))} | {h.ms(h.p95(g))} |"
        )
    fanout = extra.get("fanout") or []
    if fanout:
        lines += [
            "",
            f"One line to {FANOUT_SESSIONS} sessions at once (an operator driving {FANOUT_SESSIONS} avatars, issue 5) "
            f"against {FANOUT_SESSIONS} sessions each saying a line of its own: time until every session "
            "has its first piece from the TTS (speak_stream, cache emptied first; median of 3 runs), ms:",
            "",
            "| lines | case | median session | last session | sentences synthesised (first pieces, and next ones begun meanwhile) |",
            "|---|---|---|---|---|",
        ]
        for kind, case, med, last, count in fanout:
            lines.append(f"| {kind} | {case} | {h.ms(med)} | {h.ms(last)} | {count} |")
    rtf = [(t.synth_end - t.synth_start) / t.first_audio for t in warm if t.first_audio > 0]
    chars = {kind: [len(t.first_sentence) for t in warm if t.kind == kind] for kind in ("short", "long")}
    cpu = {kind: [t.synth_cpu for t in warm if t.kind == kind and math.isfinite(t.synth_cpu)] for kind in chars}
    audio = {kind: [t.first_audio for t in warm if t.kind == kind] for kind in chars}
    lines += [
        "",
        f"Piper on the first piece: median real-time factor {h.median(rtf):.3f} (synthesis time / audio "
        f"length; other jobs share the cores), {h.median(chars['short']):.0f} characters for short lines and "
        f"{h.median(chars['long']):.0f} for long ones (their first piece; median audio "
        f"{h.ms(h.median(audio['short']))} and {h.ms(h.median(audio['long']))} ms). CPU time of that "
        f"synthesis (its thread's, what it takes on an idle core): median {h.ms(h.median(cpu['short']))} ms "
        f"for short lines, {h.ms(h.median(cpu['long']))} ms for long ones.",
    ]
    lines += [
        "",
        "Steps: *data channel* customer send to `Session.handle_message`; *driver to TTS* echo driver, "
        "speaker queue, sentence split; *TTS first sentence* synthesis of the first piece (`split_sentences` "
        "cuts a first sentence over 20 speech units at a clause break or before a phrase opener such as "
        "*and*, *from*); *lip-sync + schedule* mouth curve and 48 kHz "
        "resampling; *schedule lead* to the first audio sample no track has read (the next 20 ms frame "
        "boundary), at least `SCHEDULE_LEAD` (5 ms); "
        "*TTS lead-in* first voiced 20 ms frame after the segment start (the reply's leading silence is "
        "trimmed to 10 ms; negative when the voice "
        "starts inside the frame the segment starts in); *send + network* that frame's play time to its "
        "packet's arrival (Opus encode, SRTP, UDP on loopback; the track sends a frame at its start time).",
        "",
        f"Machine: {h.machine_line()}.",
    ]
    return "\n".join(lines)


def print_latency(turns: list[Turn]) -> None:
    for t in turns:
        steps = " ".join(f"{k.split()[0]}={h.ms(v)}" for k, v in t.steps().items())
        print(
            f"{t.kind:5} {h.ms(t.total):>5} ms  decoded {h.ms(t.decoded - t.sent):>5} ms  [{steps}]  {t.text[:40]!r}"
        )


# ===================================================================================== avsync
SYNC_LINES = (
    SHORT_LINES
    + LONG_LINES
    + (
        "Let me look that up for you.",
        "Is there anything else I can help you with today?",
        "Please hold on while I check the details of your last payment.",
    )
)
MAX_LAG = 0.4  # seconds searched either way; speech rhythm repeats beyond this
GRID = 0.005  # correlation grid, seconds
HIGH_PASS = 1.0  # seconds: slower changes (pauses vs speech, head sway) are removed


@dataclass
class MouthProbe:
    """The mouth region of an avatar and its rest picture, in luma (what the encoder sends).

    ``metric(y)`` is the mean absolute difference of the region against the rest frame: 0 at
    rest, larger as the mouth opens (the brief's pixel measure of mouth movement).
    """

    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    rest: np.ndarray  # rest-frame luma inside the box, float32

    @classmethod
    def build(cls, renderer: Any, pad: int = 8) -> MouthProbe:
        from avatar.face_state import FaceState, MouthShape

        def luma(state: FaceState) -> np.ndarray:
            rgb = renderer.render(state)
            return luma_of_rgb(rgb)

        rest = luma(FaceState())
        shapes = (
            MouthShape(open=1.0),
            MouthShape(open=0.6, width=1.0, teeth=1.0),
            MouthShape(open=0.4, width=-1.0, round=1.0),
            MouthShape(press=1.0),
        )
        diff = np.zeros(rest.shape, np.float32)
        for shape in shapes:
            diff = np.maximum(diff, np.abs(luma(FaceState(mouth=shape)) - rest))
        ys, xs = np.nonzero(diff > 12.0)
        if len(ys) == 0:
            raise RuntimeError("the avatar's mouth does not change the picture: no mouth region found")
        height, width = rest.shape
        box = (
            max(0, int(ys.min()) - pad),
            min(height, int(ys.max()) + 1 + pad),
            max(0, int(xs.min()) - pad),
            min(width, int(xs.max()) + 1 + pad),
        )
        y0, y1, x0, x1 = box
        return cls(box, rest[y0:y1, x0:x1].copy())

    def metric(self, y: np.ndarray) -> float:
        y0, y1, x0, x1 = self.box
        return float(np.mean(np.abs(y[y0:y1, x0:x1].astype(np.float32) - self.rest)))


def luma_of_rgb(rgb: np.ndarray) -> np.ndarray:
    """The Y plane the server's I420 conversion produces (``rgb_to_video_frame``)."""
    import cv2

    height = rgb.shape[0]
    return np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)[:height], dtype=np.float32)


def av_offset(
    t_audio: np.ndarray, envelope: np.ndarray, t_video: np.ndarray, mouth: np.ndarray
) -> tuple[float, float]:
    """Lag (seconds) at which the mouth signal best matches the audio envelope, and the peak
    correlation. Positive: the mouth moves later than the voice.

    Both signals are put on a 5 ms grid over their common span, high-passed (a 1 s moving
    average removed) and normalised; the correlation peak is refined by a parabola.
    """
    from scipy.ndimage import uniform_filter1d

    start = max(t_audio[0], t_video[0]) + MAX_LAG
    end = min(t_audio[-1], t_video[-1]) - MAX_LAG
    if end - start < 5.0:
        return math.nan, math.nan
    grid = np.arange(start - MAX_LAG, end + MAX_LAG, GRID)
    width = int(HIGH_PASS / GRID)

    def prepare(t: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = np.interp(grid, t, v)
        x = x - uniform_filter1d(x, width, mode="nearest")
        return (x - x.mean()) / (x.std() + 1e-12)

    a = prepare(t_audio, envelope)
    m = prepare(t_video, mouth)
    k_max = int(MAX_LAG / GRID)
    core = slice(k_max, len(grid) - k_max)
    lags = np.arange(-k_max, k_max + 1)
    corr = np.array([np.mean(a[core] * m[core.start + k : core.stop + k]) for k in lags])
    i = int(np.argmax(corr))
    shift = 0.0
    if 0 < i < len(corr) - 1:
        y0, y1, y2 = corr[i - 1], corr[i], corr[i + 1]
        denom = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / denom if denom != 0 else 0.0
    return float((lags[i] + shift) * GRID), float(corr[i])


@dataclass
class Timeline:
    """Audio envelope and mouth signal on one time axis (seconds)."""

    name: str
    t_audio: np.ndarray
    envelope: np.ndarray
    t_video: np.ndarray
    mouth: np.ndarray

    def window(self, start: float, end: float) -> Timeline:
        a = (self.t_audio >= start) & (self.t_audio < end)
        v = (self.t_video >= start) & (self.t_video < end)
        return Timeline(self.name, self.t_audio[a], self.envelope[a], self.t_video[v], self.mouth[v])

    def offset(self) -> tuple[float, float]:
        if len(self.t_audio) < 10 or len(self.t_video) < 10:
            return math.nan, math.nan
        return av_offset(self.t_audio, self.envelope, self.t_video, self.mouth)


@dataclass
class SyncCapture:
    """What one avsync run collected."""

    origin: float = 0.0  # stage clock 0 as time.monotonic()
    fps: int = 25
    segments: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (start sample, int16 48 kHz)
    faces: list[tuple[float, Any]] = field(default_factory=list)  # (stage time, FaceState)
    audio: list[tuple[int, float]] = field(default_factory=list)  # decoded (pts, rms)
    video: list[tuple[int, float]] = field(default_factory=list)  # decoded (pts, mouth metric)
    sent: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # kind -> (server pts, ready at)
    audio_log: h.StreamLog | None = None
    video_log: h.StreamLog | None = None
    audio_origin: int = 0
    video_origin: int = 0
    lines: int = 0
    codec: str = ""
    late_frames: int = 0
    sent_frames: int = 0


async def capture_sync(
    seconds: float,
    avatar: str,
    probe_factory: Callable[[Any], MouthProbe],
    codec: str | None,
    inject_lag: float = 0.0,
) -> tuple[SyncCapture, MouthProbe]:
    """Run one live session speaking lines with pauses for ``seconds``; record the stage's own
    audio and faces and everything the customer receives.

    ``inject_lag`` (seconds, a check of the method) makes the video track draw the face of
    ``t - inject_lag`` for frame time ``t``: the measured offset should grow by that much."""
    cap = SyncCapture()
    rng = random.Random(5)
    async with h.InProcessServer() as server, h.http_session() as http:
        settings = server.app[__import__("avatar.server.app", fromlist=["SETTINGS"]).SETTINGS]
        cap.fps = settings.fps
        mouth_probe = probe_factory(server.engines.catalog.load(avatar, settings.width, settings.height))

        def on_frame(kind: str, frame: av.frame.Frame, at: float) -> None:
            if isinstance(frame, av.AudioFrame):
                samples = frame.to_ndarray().astype(np.float64)
                cap.audio.append((int(frame.pts or 0), float(np.sqrt(np.mean(samples**2)))))
            elif isinstance(frame, av.VideoFrame):
                y = frame.to_ndarray()[: frame.height]  # yuv420p: the Y rows come first
                cap.video.append((int(frame.pts or 0), mouth_probe.metric(y)))

        with h.ReceiveProbe() as probe:
            customer = h.Customer(on_frame=on_frame, probe=probe, codec=codec)
            sampler: asyncio.Task[None] | None = None
            try:
                sid = await customer.connect(http, server.url, avatar)
                stage = server.sessions.get(sid).stage
                peer = server.sessions.peers[sid]
                cap.origin = time.monotonic() - stage.clock.time()
                schedule = stage.schedule

                def keep_schedule(chunk: Any, mouth: Any) -> Any:
                    seg = schedule(chunk, mouth)
                    cap.segments.append((seg.start, seg.audio.copy()))
                    return seg

                setattr(stage, "schedule", keep_schedule)  # noqa: B010 (benchmark-only hook)
                if inject_lag:
                    draw = peer.video._render

                    def late_render(t: float) -> Any:
                        return draw(t - inject_lag)

                    setattr(peer.video, "_render", late_render)  # noqa: B010
                for track in (peer.audio, peer.video):
                    sent: list[tuple[int, float]] = []
                    cap.sent[track.kind] = sent
                    recv = track.recv

                    async def timed_recv(recv: Any = recv, sent: list[tuple[int, float]] = sent) -> Any:
                        frame = await recv()
                        sent.append((int(frame.pts), time.monotonic()))
                        return frame

                    setattr(track, "recv", timed_recv)  # noqa: B010

                async def sample_faces() -> None:
                    # The face shown at each frame time, read 0.3 s behind the clock (segments
                    # stay on the stage for 2 s after they end, so nothing is missed).
                    j = math.ceil(stage.clock.time() * cap.fps)
                    while True:
                        await asyncio.sleep(0.2)
                        last = math.floor((stage.clock.time() - 0.3) * cap.fps)
                        while j <= last:
                            t = j / cap.fps
                            cap.faces.append((t, stage.face_at(t)))
                            j += 1

                sampler = asyncio.create_task(sample_faces(), name="sample-faces")
                await asyncio.sleep(1.0)
                end = time.monotonic() + seconds
                i = 0
                while time.monotonic() < end:
                    since = time.monotonic()
                    customer.send_text(SYNC_LINES[i % len(SYNC_LINES)])
                    i += 1
                    await customer.wait_event(
                        lambda e: e.get("type") == "state" and e.get("state") == "speaking", 30.0, since
                    )
                    await customer.wait_event(
                        lambda e: e.get("type") == "state" and e.get("state") == "idle", 60.0, since
                    )
                    await asyncio.sleep(rng.uniform(0.4, 1.2))
                cap.lines = i
                await asyncio.sleep(1.0)
                cap.late_frames = peer.video.frames_late
                cap.codec = customer.video_codec
                cap.sent_frames = peer.video.frames_sent
                cap.audio_log, cap.video_log = customer.audio_log, customer.video_log
                cap.audio_origin = h.rtp_origin(customer.audio_receiver) or 0
                cap.video_origin = h.rtp_origin(customer.video_receiver) or 0
            finally:
                if sampler is not None:
                    sampler.cancel()
                    await asyncio.gather(sampler, return_exceptions=True)
                await customer.close()
    return cap, mouth_probe


def ground_truth(cap: SyncCapture, renderer: Any, probe: MouthProbe) -> tuple[Timeline, Timeline]:
    """The stage's own signals at identical clock times, no transport: the audio envelope of the
    timeline (20 ms blocks on the track's frame grid, stamped at their centres) against
    (1) the pixel mouth metric of each frame rendered locally and (2) ``mouth.open``."""
    t_faces = np.array([t for t, _ in cap.faces])
    end_sample = int((t_faces[-1] + 1.0) * AUDIO_RATE)
    blocks = end_sample // AUDIO_FRAME
    sumsq = np.zeros(blocks + 1)
    for start, audio in cap.segments:
        pad = start % AUDIO_FRAME
        x = np.concatenate([np.zeros(pad), audio.astype(np.float64)])
        x = np.concatenate([x, np.zeros(-len(x) % AUDIO_FRAME)])
        per_block = np.sum(x.reshape(-1, AUDIO_FRAME) ** 2, axis=1)
        first = start // AUDIO_FRAME
        n = max(0, min(len(per_block), blocks + 1 - first))
        sumsq[first : first + n] += per_block[:n]
    envelope = np.sqrt(sumsq / AUDIO_FRAME)
    t_audio = (np.arange(len(envelope)) + 0.5) * AUDIO_FRAME / AUDIO_RATE
    pixels = np.array([probe.metric(luma_of_rgb(renderer.render(face))) for _, face in cap.faces])
    opens = np.array([face.mouth.open for _, face in cap.faces])
    return (
        Timeline("stage, pixels", t_audio, envelope, t_faces, pixels),
        Timeline("stage, mouth.open", t_audio, envelope, t_faces, opens),
    )


def received(cap: SyncCapture) -> tuple[Timeline, Timeline]:
    """The customer's decoded signals on (1) packet arrival times and (2) the senders' clocks
    through RTCP sender reports (how a browser lines audio up with video)."""
    assert cap.audio_log is not None and cap.video_log is not None
    half_audio_frame = AUDIO_FRAME / AUDIO_RATE / 2  # an audio frame's content is centred 10 ms in

    def times(
        items: list[tuple[int, float]], origin: int, log: h.StreamLog, centre: float
    ) -> tuple[np.ndarray, ...]:
        arrival, sender, values_a, values_s = [], [], [], []
        reports = log.sender_reports
        report_arrivals = [r.arrival for r in reports]
        import bisect

        for pts, value in items:
            rtp = (origin + pts) % (1 << 32)
            at = log.frame_arrival.get(rtp)
            if at is None:
                continue
            arrival.append(at + centre)
            values_a.append(value)
            k = bisect.bisect_right(report_arrivals, at) - 1
            if k >= 0:
                sr = reports[k]
                delta = (rtp - sr.rtp + (1 << 31)) % (1 << 32) - (1 << 31)
                sender.append(sr.ntp + delta / log.clock_rate + centre)
                values_s.append(value)
        return np.array(arrival), np.array(values_a), np.array(sender), np.array(values_s)

    a_t, a_v, a_st, a_sv = times(cap.audio, cap.audio_origin, cap.audio_log, half_audio_frame)
    v_t, v_v, v_st, v_sv = times(cap.video, cap.video_origin, cap.video_log, 0.0)
    return (
        Timeline("received, arrival times", a_t, a_v, v_t, v_v),
        Timeline("received, RTCP sender-report times", a_st, a_sv, v_st, v_sv),
    )


def send_delays(cap: SyncCapture) -> dict[str, tuple[float, float]]:
    """Per kind: median (content time -> frame handed to the encoder) and (content time ->
    its packet's arrival), seconds. The RTP origin is random, so the sender's origin is found
    as the offset that matches the most server pts to received RTP timestamps."""
    out: dict[str, tuple[float, float]] = {}
    rate = {"audio": AUDIO_RATE, "video": 90_000}
    for kind, log in (("audio", cap.audio_log), ("video", cap.video_log)):
        sent = cap.sent.get(kind, [])
        if log is None or not sent or not log.frame_arrival:
            continue
        ready = {pts: at for pts, at in sent}
        arrivals = list(log.frame_arrival.items())
        # Candidate origins from frames that could be the same (arrived within 0.3 s after
        # being handed over); the true one matches the most frames, and of origins a whole
        # frame apart (which match as many) it gives the shortest non-negative delay.
        votes: Counter[int] = Counter()
        for pts, at in sent[:50]:
            for rtp, arrival in arrivals[:400]:
                if 0.0 <= arrival - at <= 0.3:
                    votes[(rtp - pts) % (1 << 32)] += 1
        scored: list[tuple[int, float, int]] = []  # (frames matched, median delay, origin)
        for candidate, _ in votes.most_common(10):
            delays = [
                arrival - ready[(rtp - candidate) % (1 << 32)]
                for rtp, arrival in arrivals
                if (rtp - candidate) % (1 << 32) in ready
            ]
            if delays and min(delays) >= -0.002:  # no packet arrives before its frame was handed over
                scored.append((len(delays), h.median(delays), candidate))
        if not scored:
            continue
        most = max(n for n, _, _ in scored)
        best = min((d, c) for n, d, c in scored if n >= 0.9 * most)[1]
        to_ready, to_arrival = [], []
        for rtp, arrival in log.frame_arrival.items():
            pts = (rtp - best) % (1 << 32)
            if pts in ready:
                content = cap.origin + pts / rate[kind]
                to_ready.append(ready[pts] - content)
                to_arrival.append(arrival - content)
        if to_ready:
            out[kind] = (h.median(to_ready), h.median(to_arrival))
    return out


@dataclass
class SyncResult:
    seconds: float
    window: float
    whole: dict[str, tuple[float, float]]  # timeline name -> (offset, peak correlation)
    windows: list[tuple[float, dict[str, float]]]  # (window start, minutes) -> offsets by timeline
    delays: dict[str, tuple[float, float]]
    cap: SyncCapture
    box: tuple[int, int, int, int]
    injected: float = 0.0  # seconds the video was deliberately drawn late (a method check)

    def slope(self, name: str) -> float:
        """ms per minute of (``name`` minus the pixel ground truth), by least squares."""
        xs = [
            w
            for w, d in self.windows
            if math.isfinite(d.get(name, math.nan)) and math.isfinite(d["intrinsic"])
        ]
        ys = [d[name] - d["intrinsic"] for w, d in self.windows if w in xs]
        if len(xs) < 2:
            return math.nan
        return float(np.polyfit(np.array(xs) / 60.0, np.array(ys) * 1000.0, 1)[0])


async def run_avsync(minutes: float, avatar: str, codec: str | None, inject_lag: float = 0.0) -> SyncResult:
    seconds = minutes * 60.0
    cap, probe = await capture_sync(seconds, avatar, MouthProbe.build, codec, inject_lag)
    from avatar.config import load_settings
    from avatar.render.catalog import AvatarCatalog, default_assets_dir

    settings = load_settings(env={})
    with tempfile.TemporaryDirectory() as tmp:
        renderer = AvatarCatalog(default_assets_dir(), Path(tmp)).load(
            avatar, settings.width, settings.height
        )
        truth_pixels, truth_open = ground_truth(cap, renderer, probe)
    rx_arrival, rx_sender = received(cap)
    timelines = {
        "intrinsic": truth_pixels,
        "intrinsic mouth.open": truth_open,
        "arrival": rx_arrival,
        "sender report": rx_sender,
    }
    whole = {name: tl.offset() for name, tl in timelines.items()}
    window = 30.0 if seconds <= 180 else 60.0
    windows: list[tuple[float, dict[str, float]]] = []
    # Window edges on each timeline's own axis, from its first media time.
    firsts = {
        name: max(tl.t_audio[0], tl.t_video[0])
        for name, tl in timelines.items()
        if len(tl.t_audio) and len(tl.t_video)
    }
    spans = {
        name: min(tl.t_audio[-1], tl.t_video[-1]) - firsts[name]
        for name, tl in timelines.items()
        if name in firsts
    }
    span = min(spans.values()) if spans else 0.0
    w = 0.0
    while w + window <= span + 1e-6:
        row = {
            name: tl.window(firsts[name] + w, firsts[name] + w + window).offset()[0]
            for name, tl in timelines.items()
            if name in firsts
        }
        windows.append((w, row))
        w += window
    return SyncResult(seconds, window, whole, windows, send_delays(cap), cap, probe.box, inject_lag)


def avsync_section(r: SyncResult, avatar: str, check: SyncResult | None = None, given: str = "") -> str:
    def off(name: str) -> str:
        value = r.whole[name][0]
        return "n/a" if not math.isfinite(value) else f"{value * 1000:+.0f}"

    def diff(name: str) -> str:
        d = r.whole[name][0] - r.whole["intrinsic"][0]
        return "n/a" if not math.isfinite(d) else f"{d * 1000:+.0f}"

    minutes = r.seconds / 60.0
    cmd = f"{COMMAND} avsync{given}"
    lines = [
        "## Live call: A/V offset and drift",
        "",
        f"`{cmd}` (options: `--minutes` (default 2), `--check-lag`, `--avatar`, `--codec`, `--no-write`)",
        "",
        f"One live session (avatar {avatar}, 512x512 at {r.cap.fps} fps, {r.cap.codec}, Piper) on the real app in this process, "
        f"speaking {r.cap.lines} lines with 0.4-1.2 s pauses over {minutes:g} min, received by an aiortc customer "
        "that decodes both streams. Mouth movement: mean absolute luma difference of the mouth region "
        f"(found by rendering rest vs open mouths with the same renderer; box y {r.box[0]}-{r.box[1]}, x {r.box[2]}-{r.box[3]}) "
        "against the rest frame, per decoded video frame. Voice: RMS envelope of each decoded 20 ms audio frame. "
        "Offset: the lag of the peak of their cross-correlation (5 ms grid, 1 s high-pass, parabolic peak), "
        "positive when the mouth moves later than the voice. The intrinsic lag (how the lip-sync's mouth, "
        "with its co-articulation and smoothing, lines up with the loudness of the voice at all) is the same "
        "correlation on the stage's ground truth: its audio timeline and the face at each frame's clock time, "
        "rendered locally, no transport; what transport adds is the difference.",
        "",
        "| signals | offset, ms | minus intrinsic, ms | peak correlation |",
        "|---|---|---|---|",
        f"| intrinsic: stage audio vs locally rendered mouth pixels | {off('intrinsic')} | 0 | {r.whole['intrinsic'][1]:.2f} |",
        f"| intrinsic: stage audio vs `FaceState.mouth.open` | {off('intrinsic mouth.open')} | {diff('intrinsic mouth.open')} | {r.whole['intrinsic mouth.open'][1]:.2f} |",
        f"| **received, on packet arrival times** | {off('arrival')} | **{diff('arrival')}** | {r.whole['arrival'][1]:.2f} |",
        f"| **received, on RTCP sender-report times** (how a browser syncs) | {off('sender report')} | **{diff('sender report')}** | {r.whole['sender report'][1]:.2f} |",
        "",
    ]
    if r.delays:
        parts = [
            f"{kind}: handed to the encoder {ready * 1000:+.0f} ms after its clock time, its packet arrives {arrival * 1000:+.0f} ms"
            for kind, (ready, arrival) in r.delays.items()
        ]
        lines += ["Send path, medians: " + "; ".join(parts) + ".", ""]
    lines += [
        f"Drift: offset per {r.window:g} s window (ms; received minus intrinsic in brackets). "
        f"Slope of (received - intrinsic): arrival {r.slope('arrival'):+.2f} ms/min, "
        f"sender report {r.slope('sender report'):+.2f} ms/min.",
        "",
        "| window from (min) | intrinsic | received, arrival | received, sender report |",
        "|---|---|---|---|",
    ]
    for start, row in r.windows:
        cells = []
        for name in ("arrival", "sender report"):
            v, i = row.get(name, math.nan), row["intrinsic"]
            cells.append("n/a" if not math.isfinite(v) else f"{v * 1000:+.0f} ({(v - i) * 1000:+.0f})")
        intrinsic = row["intrinsic"]
        lines.append(
            f"| {start / 60:.1f} | {'n/a' if not math.isfinite(intrinsic) else f'{intrinsic * 1000:+.0f}'} | {cells[0]} | {cells[1]} |"
        )
    if check is not None:
        got = [
            (check.whole[name][0] - check.whole["intrinsic"][0]) * 1000
            for name in ("arrival", "sender report")
        ]
        lines += [
            "",
            f"Method check: a {check.seconds:g} s run whose video track draws every frame's face "
            f"{check.injected * 1000:g} ms late reads {got[0]:+.0f} ms (arrival) and {got[1]:+.0f} ms "
            "(sender report) against its own ground truth.",
        ]
    lines += [
        "",
        f"Video frames sent {r.cap.sent_frames}, skipped late {r.cap.late_frames}. Machine: {h.machine_line()}.",
    ]
    return "\n".join(lines)


# =================================================================================== capacity
TARGET_FPS = 24.0
# Said again and again by every avatar in the speaking phase: several sentences, so speech
# runs on while the next sentence is synthesised.
MONOLOGUE = (
    "Thank you for calling. I can help you with your accounts, your cards and your payments today. "
    "To check your balance, open the app and choose the account you want to see. "
    "If your card is lost or stolen, we will block it at once and send a new one within five working days. "
    "For your security, please never share your card number or your passcode with anyone."
)
# What each customer's avatar says: the monologue with a number in every sentence, different for
# every customer and every time, so that no sentence is ever in the server's TTS cache (every
# session pays for its own synthesis, as sessions in different conversations do).
NUMBERED_MONOLOGUE = (
    "Thank you for calling line {n}. I can help you with your accounts, your cards and your payments today, "
    "caller {n}. To check balance {n}, open the app and choose the account you want to see. "
    "If card {n} is lost or stolen, we will block it at once and send a new one within five working days. "
    "For your security, please never share card number {n} or your passcode with anyone."
)
VOICED_PACKET_BYTES = 20
# A measurement waits (up to --quiet seconds) until other processes use less than this
# percent of one core: the machine is shared, and a starved server says nothing about itself.
QUIET_OTHERS = 30.0  # Opus packets of digital silence are a few bytes; speech is far larger


@dataclass
class Listener:
    """A capacity customer: keeps receive times of video frames and audio packet sizes."""

    customer: h.Customer
    video_times: list[float] = field(default_factory=list)
    audio: list[tuple[float, int]] = field(default_factory=list)  # (received at, packet bytes)

    def on_frame(self, kind: str, frame: av.frame.Frame, at: float) -> None:
        if kind == "video":
            self.video_times.append(at)
        else:
            self.audio.append((at, frame.opaque if isinstance(frame.opaque, int) else 0))

    def fps(self, start: float, end: float) -> float:
        return sum(1 for t in self.video_times if start <= t < end) / (end - start)

    def voiced_share(self, start: float, end: float) -> float:
        sizes = [n for t, n in self.audio if start <= t < end]
        return sum(1 for n in sizes if n > VOICED_PACKET_BYTES) / max(len(sizes), 1)


@dataclass
class CapacityRow:
    sessions: int
    mode: str  # "idle" | "speaking"
    fps_median: float
    fps_min: float
    voiced: float  # median share of voiced audio packets
    cpu: dict[str, float]

    @property
    def holds(self) -> bool:
        return self.fps_min >= TARGET_FPS


@dataclass
class Profile:
    sessions: int
    mode: str  # what the avatars were doing: "idle" | "speaking"
    seconds: float
    server_cpu: float  # % of one core over the profile
    threads: list[tuple[str, int, float]]  # (thread group, threads, % of one core)
    work: list[tuple[str, float]]  # (category, % of one core)
    top: list[tuple[str, float]]  # leaf functions, share of samples


async def speak_forever(customer: h.Customer, stop: asyncio.Event, numbers: Iterator[int]) -> None:
    """Say ``NUMBERED_MONOLOGUE`` (with the next of ``numbers``) again each time the avatar falls
    idle, until ``stop``."""
    while not stop.is_set():
        since = time.monotonic()
        customer.send_text(NUMBERED_MONOLOGUE.format(n=next(numbers)))
        with contextlib.suppress(TimeoutError):
            await customer.wait_event(
                lambda e: e.get("type") == "state" and e.get("state") == "speaking", 60.0, since
            )
            idle = asyncio.ensure_future(
                customer.wait_event(
                    lambda e: e.get("type") == "state" and e.get("state") == "idle", 120.0, since
                )
            )
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({idle, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (idle, stopped):
                    fut.cancel()
                await asyncio.gather(idle, stopped, return_exceptions=True)


async def measure(
    listeners: list[Listener], server_pid: int, seconds: float, mode: str, quiet: float
) -> CapacityRow:
    """Received frame rates, voiced share and CPU over ``seconds``; first waits up to
    ``quiet`` seconds for other jobs on the machine to calm down (a shared machine)."""
    pids = {"server": server_pid, "customers": os.getpid()}
    if quiet > 0:
        await h.wait_for_quiet(pids, QUIET_OTHERS, quiet)
    cpu = h.CpuWindow(pids)
    cpu.start()
    start = time.monotonic()
    await asyncio.sleep(seconds)
    end = time.monotonic()
    used = cpu.stop()
    rates = [li.fps(start, end) for li in listeners]
    voiced = [li.voiced_share(start, end) for li in listeners]
    return CapacityRow(len(listeners), mode, h.median(rates), min(rates), h.median(voiced), used)


def categorise(stack: list[str]) -> str:
    """The work a sampled stack was doing, judged from its innermost recognisable frame."""
    rules = (
        ("render (avatar/render)", ("avatar/render/",)),
        ("RGB->I420 + VideoFrame (rtc/tracks.py)", ("rgb_to_video_frame",)),
        ("video encode (aiortc codecs)", ("codecs/h264.py", "codecs/vpx.py")),
        ("audio encode (Opus)", ("codecs/opus.py",)),
        ("TTS (Piper, phonemes)", ("piper", "onnxruntime", "speech/tts/", "phonemize", "espeak")),
        ("lip-sync + stage audio", ("speech/lipsync", "visemes", "avatar/stage.py", "scipy/signal")),
        ("SRTP/DTLS send (aiortc transport)", ("rtcdtlstransport.py", "pylibsrtp", "OpenSSL")),
        ("RTP sender loop (aiortc)", ("rtcrtpsender.py", "aiortc/rtp.py", "aiortc/codecs/base.py")),
        ("ICE/UDP (aioice)", ("aioice/",)),
        ("SCTP data channel", ("rtcsctptransport.py",)),
        ("other avatar code", ("avatar/",)),
        ("asyncio event loop", ("asyncio/",)),
        ("thread pools", ("concurrent/futures", "threading.py")),
    )
    for frame in reversed(stack):
        for name, needles in rules:
            if any(n in frame for n in needles):
                return name
    return "other"


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (thread id -> user + system)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            out[int(task.name)] = h.process_cpu_seconds_path(task / "stat")
    return out


async def profile_server(pid: int, sessions: int, mode: str, seconds: float) -> Profile | None:
    """Where the server's CPU goes: each thread's CPU time from ``/proc`` over ``seconds``,
    split by what py-spy (``pip install py-spy``) saw that thread doing. Threads py-spy does
    not see are native (onnxruntime's pool, codec threads)."""
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("capacity: py-spy is not installed in .venv (pip install py-spy): no profile", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        before, wall0 = thread_cpu_seconds(pid), time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            str(spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "97",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), seconds + 60.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return None
        after, wall = thread_cpu_seconds(pid), time.monotonic() - wall0
        if proc.returncode != 0 or not out.exists():
            print(f"capacity: py-spy failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
            return None
        text = out.read_text(encoding="utf-8", errors="replace")
    names: dict[int, str] = {}
    work_samples: dict[int, Counter[str]] = {}
    leaves: Counter[str] = Counter()
    for line in text.splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        head, _, rest = stack_text.partition(";")
        found = re.match(r"thread \((\d+)\): ?(.*)", head)
        if found is None or not count_text.isdigit():
            continue
        tid, count = int(found.group(1)), int(count_text)
        names[tid] = found.group(2) or "unnamed"
        frames = rest.split(";") if rest else []
        work_samples.setdefault(tid, Counter())[categorise(frames)] += count
        if frames:
            leaves[frames[-1]] += count
    groups: dict[str, list[float]] = {}
    work: dict[str, float] = {}
    for tid, cpu_after in after.items():
        used = 100.0 * (cpu_after - before.get(tid, 0.0)) / wall
        name = names.get(tid)
        group = (
            "native threads (libx264/libvpx encoder threads, onnxruntime pool)"
            if name is None
            else re.sub(r"[_-]?\d+(_\d+)?$", "", name)
        )
        groups.setdefault(group, []).append(used)
        samples = work_samples.get(tid)
        if samples:
            total = sum(samples.values())
            for category, n in samples.items():
                work[category] = work.get(category, 0.0) + used * n / total
        else:
            key = "native threads: libx264/libvpx encoder threads, onnxruntime pool (TTS)"
            work[key] = work.get(key, 0.0) + used
    all_samples = sum(leaves.values()) or 1
    return Profile(
        sessions,
        mode,
        seconds,
        sum(sum(v) for v in groups.values()),
        sorted(((g, len(v), sum(v)) for g, v in groups.items()), key=lambda x: -x[2]),
        sorted(work.items(), key=lambda kv: -kv[1]),
        [(k, 100.0 * v / all_samples) for k, v in leaves.most_common(10)],
    )


def component_costs(avatar: str, width: int, height: int) -> list[tuple[str, float, float, str]]:
    """CPU cost of each per-session piece of work, measured here on this process's CPU time
    (``time.process_time``, codec threads included): (component, CPU ms per unit, units per
    second of one session, when). Frames are the server's own path: a ``Stage`` on a fake
    clock with Piper speech scheduled, ``Stage.render``, ``rgb_to_video_frame``, aiortc's
    encoders."""
    import fractions
    import tempfile as _tempfile

    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.codecs.vpx import Vp8Encoder
    from aiortc.rtp import compute_audio_level_dbov

    from avatar.clock import FakeClock
    from avatar.config import load_settings
    from avatar.idle import IdleAnimator
    from avatar.render.catalog import AvatarCatalog, default_assets_dir
    from avatar.rtc.tracks import rgb_to_video_frame
    from avatar.speech.lipsync import track_from_phonemes
    from avatar.speech.sentences import split_sentences
    from avatar.speech.tts.registry import TTSRegistry
    from avatar.stage import Stage

    settings = load_settings(env={})
    registry = TTSRegistry(settings)
    voice = registry.voice_for(avatar, "en")
    engine: Any = registry.engine(voice.engine)
    engine.synthesize_blocking("Hello.", voice)  # load the model outside the measurement
    cpu = time.process_time()
    chunks = [engine.synthesize_blocking(sentence, voice) for sentence in split_sentences(MONOLOGUE)]
    tts_cpu = time.process_time() - cpu
    speech_seconds = sum(c.duration for c in chunks)

    with _tempfile.TemporaryDirectory() as tmp:
        renderer = AvatarCatalog(default_assets_dir(), Path(tmp)).load(avatar, width, height)
    fake = FakeClock()
    stage = Stage(renderer, fake.media_clock(), IdleAnimator(7), fps=settings.fps, avatar=avatar)
    fps = settings.fps

    def render_frames(start: float, count: int) -> tuple[list[np.ndarray], float]:
        cpu = time.process_time()
        frames = [stage.render(start + j / fps) for j in range(count)]
        return frames, (time.process_time() - cpu) / count * 1000.0

    _, idle_ms = render_frames(0.0, 100)
    first = stage.schedule(
        chunks[0], track_from_phonemes(chunks[0].phonemes, chunks[0].duration, lang=chunks[0].lang)
    )
    for chunk in chunks[1:]:
        stage.schedule(chunk, track_from_phonemes(chunk.phonemes, chunk.duration, lang=chunk.lang))
    count = min(250, int(speech_seconds * fps))
    speaking_frames, speaking_ms = render_frames(first.start_time, count)

    cpu = time.process_time()
    video_frames = [rgb_to_video_frame(rgb) for rgb in speaking_frames]
    i420_ms = (time.process_time() - cpu) / len(video_frames) * 1000.0
    for j, frame in enumerate(video_frames):
        frame.pts, frame.time_base = j * 3600, fractions.Fraction(1, 90_000)

    def encode_ms(encoder: Any) -> float:
        encoder.encode(video_frames[0], True)  # open the codec outside the measurement
        cpu = time.process_time()
        for frame in video_frames[1:]:
            encoder.encode(frame, False)
        return (time.process_time() - cpu) / (len(video_frames) - 1) * 1000.0

    h264_ms, vp8_ms = encode_ms(H264Encoder()), encode_ms(Vp8Encoder())
    opus = OpusEncoder()
    audio = stage.read_audio(first.start, AUDIO_FRAME * 250)
    audio_frames: list[av.AudioFrame] = []
    for j in range(250):
        aframe = av.AudioFrame.from_ndarray(
            audio[j * AUDIO_FRAME : (j + 1) * AUDIO_FRAME].reshape(1, -1), format="s16", layout="mono"
        )
        aframe.sample_rate, aframe.pts, aframe.time_base = (
            AUDIO_RATE,
            j * AUDIO_FRAME,
            fractions.Fraction(1, AUDIO_RATE),
        )
        audio_frames.append(aframe)
    cpu = time.process_time()
    for aframe in audio_frames:
        compute_audio_level_dbov(aframe)  # aiortc's sender does this on the event loop, per frame
    level_ms = (time.process_time() - cpu) / len(audio_frames) * 1000.0
    cpu = time.process_time()
    for aframe in audio_frames:
        opus.encode(aframe)
    opus_ms = (time.process_time() - cpu) / len(audio_frames) * 1000.0
    return [
        ("render, idle (Stage.render)", idle_ms, fps, "idle"),
        ("render, speaking (Stage.render)", speaking_ms, fps, "speaking"),
        ("RGB -> I420 VideoFrame (rgb_to_video_frame)", i420_ms, fps, "both"),
        ("H.264 encode (aiortc H264Encoder, libx264)", h264_ms, fps, "both (H264)"),
        ("VP8 encode (aiortc Vp8Encoder, libvpx)", vp8_ms, fps, "both (VP8)"),
        ("Opus encode (aiortc OpusEncoder)", opus_ms, 50.0, "both"),
        ("RTP audio level (aiortc compute_audio_level_dbov, pure Python)", level_ms, 50.0, "both"),
        ("Piper TTS, per second of speech", 1000.0 * tts_cpu / speech_seconds, 1.0, "speaking"),
    ]


async def run_capacity(
    start: int,
    step: int,
    max_n: int,
    avatar: str,
    window: float,
    profile: bool,
    codec: str | None,
    quiet: float = 0.0,
) -> tuple[list[CapacityRow], list[Profile], str]:
    """Step N up from ``start``; at each N measure idle, then speaking; stop stepping a mode
    once it fails, and stop when both have failed or N passes ``max_n``. A window that fails
    while other jobs took more than ``QUIET_OTHERS`` is measured once more. With ``profile``,
    the server is profiled where each mode first fails (or at the last N)."""
    h.loopback_ice_only()
    rows: list[CapacityRow] = []
    profiles: list[Profile] = []
    listeners: list[Listener] = []
    numbers = itertools.count(10)  # one per monologue said, never the same twice in a run
    idle_ok = speaking_ok = True
    with h.ServerProcess(max_sessions=max_n + 8) as server, h.null_decoders():
        async with h.http_session() as http:
            try:
                pids = {"server": server.pid, "customers": os.getpid()}

                async def window_of(mode: str, n: int) -> CapacityRow:
                    row = await measure(listeners, server.pid, window, mode, quiet)
                    print_row(row)
                    if not row.holds and row.cpu["others"] > QUIET_OTHERS:
                        row = await measure(listeners, server.pid, window, mode, quiet)  # starved: again
                        print_row(row)
                    rows.append(row)
                    if profile and (not row.holds or n + step > max_n):
                        await h.wait_for_quiet(pids, QUIET_OTHERS, quiet)
                        found = await profile_server(server.pid, n, mode, 15.0)
                        if found is not None:
                            profiles.append(found)
                    return row

                n = start
                while n <= max_n and (idle_ok or speaking_ok):
                    while len(listeners) < n:
                        customer = h.Customer(codec=codec)
                        listener = Listener(customer)
                        customer.on_frame = listener.on_frame
                        listeners.append(listener)
                        await customer.connect(http, server.url, avatar)
                    await asyncio.sleep(3.0)  # let new peers settle (keyframes, bitrate)
                    if idle_ok:
                        idle_ok = (await window_of("idle", n)).holds
                    if speaking_ok:
                        stop = asyncio.Event()
                        talkers = [
                            asyncio.create_task(speak_forever(li.customer, stop, numbers)) for li in listeners
                        ]
                        try:
                            await asyncio.sleep(4.0)  # every avatar past its first sentence
                            speaking_ok = (await window_of("speaking", n)).holds
                        finally:
                            stop.set()
                            await asyncio.gather(*talkers, return_exceptions=True)
                            for li in listeners:
                                with contextlib.suppress(Exception):
                                    await h.post_json(
                                        http,
                                        f"{server.url}/api/sessions/{li.customer.session_id}/interrupt",
                                        server.token,
                                    )
                            await asyncio.sleep(1.0)
                    n += step
            finally:
                await asyncio.gather(*(li.customer.close() for li in listeners), return_exceptions=True)
                if any(r.fps_min == 0 for r in rows):
                    print(
                        f"capacity: a session received no video; the server's log ends:\n{server.log_tail()}"
                    )
    negotiated = listeners[0].customer.video_codec if listeners else "none"
    return rows, profiles, negotiated


def print_row(row: CapacityRow) -> None:
    cpu = " ".join(f"{k}={v:.0f}%" for k, v in row.cpu.items())
    print(
        f"N={row.sessions:3d} {row.mode:8} fps median {row.fps_median:5.1f} min {row.fps_min:5.1f} "
        f"voiced {row.voiced:4.0%}  cpu {cpu}",
        flush=True,
    )


def capacity_section(
    rows: list[CapacityRow],
    profiles: list[Profile],
    avatar: str,
    window: float,
    argv: str,
    codec: str,
    components: list[tuple[str, float, float, str]],
) -> str:
    def best(mode: str) -> str:
        held = [r.sessions for r in rows if r.mode == mode and r.holds]
        failed = [r.sessions for r in rows if r.mode == mode and not r.holds]
        if not held:
            return f"fewer than {min(r.sessions for r in rows if r.mode == mode)}"
        top = max(held)
        return f"{top}" + (f" (fails at {min(failed)})" if failed else " (the largest N tried)")

    lines = [
        f"## Live call: concurrent sessions ({codec})",
        "",
        f"`{COMMAND} capacity{argv}` (options: `--start`, `--step`, `--max`, `--window`, `--quiet`, `--profile`, `--codec`, `--avatar`, `--no-write`)",
        "",
        f"`avatar serve` in a child process (default settings: 512x512, 25 fps, Piper; video codec {codec} as "
        f"negotiated), N customers (avatar {avatar}) "
        "in this process, connected on 127.0.0.1, whose aiortc receivers decode nothing (a browser decodes on the "
        "customer's machine): each customer's received video frame rate is counted over a "
        f"{window:g} s window, first with every avatar idle, then with every avatar speaking a long monologue "
        "again and again (the realistic worst case: TTS, lip-sync, speech animation and voiced Opus; every "
        "sentence carries a number never said before in the run, so the server's TTS cache never helps). "
        f"N holds when every session receives at least {TARGET_FPS:g} fps. CPU is percent of one core "
        "(200% = both cores); *other jobs* is what every other process on this shared machine took meanwhile "
        "(each window first waits up to `--quiet` s for them to drop under 30%).",
        "",
        f"**Largest N at >= {TARGET_FPS:g} fps per session: speaking {best('speaking')}; idle {best('idle')}.**",
        "",
        "| N | avatars | fps median | fps min | voiced packets | server CPU | per session | customers CPU | other jobs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.sessions} | {r.mode} | {r.fps_median:.1f} | {r.fps_min:.1f} | {r.voiced:.0%} "
            f"| {r.cpu['server']:.0f}% | {r.cpu['server'] / r.sessions:.1f}% | {r.cpu['customers']:.0f}% "
            f"| {r.cpu['others']:.0f}% |"
        )
    held = {mode: [r for r in rows if r.mode == mode and r.holds] for mode in ("idle", "speaking")}
    costs = {
        mode: h.median([r.cpu["server"] / r.sessions for r in held[mode]]) for mode in held if held[mode]
    }
    if costs:
        lines += [
            "",
            "Server CPU per session where the rate held (median over N): "
            + "; ".join(f"{mode} {cost:.1f}% of a core" for mode, cost in costs.items())
            + ". At that cost two whole cores would carry about "
            + "; ".join(f"{200.0 / cost:.0f} {mode}" for mode, cost in costs.items() if cost > 0)
            + " sessions (a projection: it ignores the event loop's single thread and the customers' share).",
        ]
    if components:
        lines += [
            "",
            "What one session costs, piece by piece (CPU time measured in the benchmark process before the sweep, "
            "on the server's own code path; % of one core for one session at 25 fps video and 50 audio frames/s):",
            "",
            "| work | CPU ms per unit | units/s | % of a core per session | applies |",
            "|---|---|---|---|---|",
        ]
        for name, cost, rate, when in components:
            lines.append(f"| {name} | {cost:.2f} | {rate:g} | {cost * rate / 10:.1f}% | {when} |")
        costs = {name: cost * rate / 10 for name, cost, rate, _ in components}
        encoder = next((k for k in costs if k.startswith("VP8" if codec.upper() == "VP8" else "H.264")), None)
        common = sum(v for k, v in costs.items() if k.startswith(("RGB", "Opus", "RTP"))) + (
            costs[encoder] if encoder else 0.0
        )
        idle_sum = common + costs.get("render, idle (Stage.render)", 0.0)
        speaking_sum = (
            common
            + costs.get("render, speaking (Stage.render)", 0.0)
            + costs.get("Piper TTS, per second of speech", 0.0)
        )

        def per_session(mode: str) -> str:
            # Rows that held and were not starved by other jobs say what a session really costs.
            fair = [r for r in rows if r.mode == mode and r.holds and r.cpu["others"] <= QUIET_OTHERS]
            chosen = fair or [r for r in rows if r.mode == mode and r.holds]
            return f"{h.median([r.cpu['server'] / r.sessions for r in chosen]):.1f}%" if chosen else "n/a"

        lines += [
            "",
            f"Sum of the pieces ({codec}): idle {idle_sum:.1f}%, speaking {speaking_sum:.1f}% of a core per session; "
            f"measured server CPU per session (rows that held, other jobs under {QUIET_OTHERS:g}% where there are "
            f"such rows): idle {per_session('idle')}, speaking {per_session('speaking')}. What the measured figure "
            "adds to the pieces is RTP packetisation, SRTP, the event loop and thread hand-offs.",
        ]
    if profiles:
        work_names = list(dict.fromkeys(k for p in profiles for k, v in p.work if v >= 0.5))
        lines += [
            "",
            "Server profiles where the rate first fell (py-spy sampling at 97 Hz for "
            f"{profiles[0].seconds:g} s, after waiting for other jobs to calm down): each thread's CPU time from "
            "`/proc`, split by what py-spy saw that thread doing (each sample filed under its innermost "
            "recognisable frame). % of one core:",
            "",
            "| work | " + " | ".join(f"N={p.sessions} {p.mode}" for p in profiles) + " |",
            "|---|" + "---|" * len(profiles),
        ]
        for name in work_names:
            cells = [f"{dict(p.work).get(name, 0.0):.0f}%" for p in profiles]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(
            "| **server, all threads** | " + " | ".join(f"**{p.server_cpu:.0f}%**" for p in profiles) + " |"
        )
        for p in profiles:
            lines += [
                "",
                f"N={p.sessions} {p.mode}, by thread: "
                + ", ".join(f"{g} ({n}) {v:.0f}%" for g, n, v in p.threads if v >= 0.5)
                + "; hottest leaf functions (share of samples): "
                + ", ".join(f"`{k}` {v:.0f}%" for k, v in p.top[:6])
                + ".",
            ]
    lines += ["", f"Machine: {h.machine_line()}."]
    return "\n".join(lines)


# ======================================================================================= main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("latency", "avsync", "capacity", "all"))
    parser.add_argument("--avatar", default="anna", help="avatar of every session (default anna)")
    parser.add_argument(
        "--turns", type=int, default=24, help="latency: warm turns, half short, half long (>= 20)"
    )
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="avsync: length of the run (10 for the drift figure)"
    )
    parser.add_argument(
        "--check-lag",
        type=float,
        default=40.0,
        metavar="MS",
        help="avsync: also run 45 s with every frame's face drawn MS late, to show the method "
        "recovers a known offset (default 40; 0 skips)",
    )
    parser.add_argument("--start", type=int, default=4, help="capacity: first N")
    parser.add_argument("--step", type=int, default=4, help="capacity: N grows by this")
    parser.add_argument("--max", type=int, default=48, help="capacity: largest N tried")
    parser.add_argument(
        "--window", type=float, default=10.0, help="capacity: seconds measured per step and mode"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=60.0,
        help="capacity: seconds each measurement may wait for other jobs to use under 30%% of a core (0: never)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="capacity: py-spy the server where speaking fails"
    )
    parser.add_argument(
        "--codec",
        choices=("H264", "VP8", "offer-order"),
        default="H264",
        help="video codec the customers offer first (default H264, the server's configured codec; "
        "offer-order: aiortc's order, VP8 first like Chrome)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    codec = None if args.codec == "offer-order" else args.codec
    if args.turns < 2:
        parser.error("--turns must be at least 2")
    if args.minutes <= 0 or args.window <= 0 or args.start < 1 or args.step < 1 or args.max < args.start:
        parser.error(
            "--minutes and --window must be positive, --start and --step at least 1, --max >= --start"
        )

    def flags(*names: str) -> str:
        """The options given with other than their defaults, as typed, for the reproduce line."""
        out = ""
        for name in names:
            value, default = getattr(args, name), parser.get_default(name)
            if value == default:
                continue
            option = "--" + name.replace("_", "-")
            out += (
                f" {option}"
                if value is True
                else f" {option} {value:g}"
                if isinstance(value, float | int)
                else f" {option} {value}"
            )
        return out

    if args.what in ("latency", "all"):
        turns, extra = asyncio.run(h.bounded(run_latency(args.turns, args.avatar, codec), 900.0, "latency"))
        print_latency(turns)
        section = latency_section(turns, extra, args.avatar, flags("turns", "avatar", "codec"))
        print(section)
        if not args.no_write:
            write_section("call-latency", section)
    if args.what in ("avsync", "all"):
        result = asyncio.run(
            h.bounded(run_avsync(args.minutes, args.avatar, codec), args.minutes * 60 + 900.0, "avsync")
        )
        check = None
        if args.check_lag:
            checking = run_avsync(0.75, args.avatar, codec, args.check_lag / 1000.0)
            check = asyncio.run(h.bounded(checking, 900.0, "avsync check"))
        section = avsync_section(result, args.avatar, check, flags("minutes", "check_lag", "avatar", "codec"))
        print(section)
        if not args.no_write:
            write_section("call-avsync", section)
    if args.what in ("capacity", "all"):
        components = component_costs(args.avatar, 512, 512)
        sweep = run_capacity(
            args.start, args.step, args.max, args.avatar, args.window, args.profile, codec, args.quiet
        )
        rows, profiles, negotiated = asyncio.run(h.bounded(sweep, 3600.0, "capacity"))
        given = flags("start", "step", "max", "window", "quiet", "profile", "avatar", "codec")
        section = capacity_section(rows, profiles, args.avatar, args.window, given, negotiated, components)
        print(section)
        if not args.no_write:
            # One section per codec, so an H.264 and a VP8 sweep can stand side by side.
            write_section(
                "call-capacity" + ("" if args.codec == "H264" else f"-{args.codec.lower()}"), section
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
