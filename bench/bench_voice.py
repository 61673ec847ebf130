"""Benchmark: the customer's voice, end to end: reply latency and barge-in time.

    .venv/bin/python bench/bench_voice.py [--turns 20] [--barge-ins 10] [--drivers brain,echo]
        [--no-partials] [--set KEY=VALUE] [--no-write]

The real server (in this process, on a loopback port, ``bench/_harness.py``) and an aiortc
customer whose microphone plays questions synthesised with the project's Piper voice (Opus
over WebRTC, as a browser sends them), in real time, with silence between them.

* **Latency**, over ``--turns`` questions, once per driver in ``--drivers`` (each in a fresh
  server): the dialogue brain (the server's default: recognition, the brain and its knowledge
  base, TTS of its answer), and the echo driver (the question said back: the speech path
  alone, with first pieces as long as the questions). From the end of the customer's speech (the last
  loud sample leaving the microphone) to the first non-silent avatar audio packet reaching
  the customer (timed on arrival, before aiortc's receive buffer; see ``_harness``). The
  server's breakdown: hearing the end of speech (transport, aiortc's receive buffer on the
  server, resampling, VAD windows), end of turn (silence waited for, including recognition
  when the turn is taken on its words), the driver until it says its answer, the first
  TTS sentence (synthesis and lip-sync), and play-out (schedule lead, send, network).
  The first TTS piece of the answer is synthesised *during* the end-of-turn wait, as soon
  as the speculative transcript reads finished (``avatar.drivers.warm_answer``): the answer
  really is synthesised then, by the server, for the turn being timed; that is the point of
  it, not a shortcut. The questions' own sentences are cleared from the TTS cache first, so
  every cache hit counted is a piece warmed during its own turn.
* **Barge-in**, over ``--barge-ins`` trials in the last driver's run: a long question is
  said back (the echo driver; the brain's answers vary in length), and
  1.5 s into the reply the customer says "Wait, stop, I have another question."; from the
  speech onset leaving the microphone to the first packet from which the received audio
  stays silent, with the server's breakdown.

Writes ``<!-- bench:voice -->`` in ``BENCHMARKS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as h
import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from bench._report import write_section  # _harness put the repository on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COMMAND = ".venv/bin/python bench/bench_voice.py"
AUDIO_RATE = 48_000
FRAME = 960  # 20 ms
VOICED_RMS = 33.0  # -60 dBFS: the stage sends exact zeros when the avatar is silent
SILENT_RMS = 8.0  # received audio this quiet (Opus of zeros decodes near 0) counts as silence
LOUD = 300  # a sample above this (int16) is speech, for the clips' onset and end
QUESTIONS = (
    "How do I activate my new card?",
    "What is my account balance?",
    "I lost my debit card, can you block it?",
    "How much does an international transfer cost?",
    "Why was my card declined at the shop?",
    "Can I change my PIN in the app?",
    "What is the exchange rate for euros today?",
    "How do I top up my account?",
    "When will my salary arrive?",
    "I see a payment I do not recognise on my statement.",
    "How can I set up a standing order?",
    "Is there a fee for withdrawing cash abroad?",
    "My transfer has not arrived yet, what should I do?",
    "Can I get a refund for a duplicate charge?",
    "How do I add my card to Apple Pay?",
    "What is the interest rate on the savings account?",
    "Please cancel the direct debit to my gym.",
    "How long does a new card take to arrive?",
    "Can I open a savings account online?",
    "Where can I see my card's PIN?",
)
LONG_QUESTION = (
    "I would like to set up a standing order from my savings account to my sister's account "
    "on the first day of every month."
)
CUT_IN = "Wait, stop, I have another question."
WARM_UP = "Hello, I have a question about my account."  # the untimed first turn, said nowhere else


@dataclass
class Clip:
    text: str
    audio: np.ndarray  # int16, 48 kHz mono
    onset: int  # first loud sample
    end: int  # one past the last loud sample


@dataclass
class Said:
    """When a clip's speech left the microphone (monotonic seconds)."""

    onset: float = math.nan
    end: float = math.nan
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Microphone(MediaStreamTrack):
    """The customer's microphone: silence, or the clips queued with ``say``, in real time.

    Each 20 ms frame is handed over once its last sample has been "captured" (as a sound
    card delivers it), so sample k of a frame returned at time T was spoken at
    ``T - (FRAME - k) / AUDIO_RATE``."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[tuple[Clip, Said]] = []
        self._pos = 0  # position in the clip being said
        self._sent = 0
        self._start: float | None = None

    def say(self, clip: Clip) -> Said:
        said = Said()
        self._queue.append((clip, said))
        return said

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + (self._sent + FRAME) / AUDIO_RATE
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        now = time.monotonic()
        samples = np.zeros(FRAME, np.int16)
        if self._queue:
            clip, said = self._queue[0]
            part = clip.audio[self._pos : self._pos + FRAME]
            samples[: part.size] = part
            for mark, attr in ((clip.onset, "onset"), (clip.end, "end")):
                if self._pos <= mark < self._pos + FRAME:
                    setattr(said, attr, now - (self._pos + FRAME - mark) / AUDIO_RATE)
            self._pos += FRAME
            if self._pos >= clip.audio.size:
                self._queue.pop(0)
                self._pos = 0
                said.done.set()
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._sent
        frame.time_base = Fraction(1, AUDIO_RATE)
        self._sent += FRAME
        return frame


@dataclass
class VoiceTurn:
    text: str
    heard: str = ""
    speech_end: float = math.nan  # the customer's last loud sample left the microphone
    server_speech_end: float = math.nan  # the server's end of the last speech window
    decided: float = math.nan  # the turn was taken as over
    how: str = ""
    reused: bool = False
    recognition: float = math.nan  # seconds the (final or reused) recognition took
    recognised: float = math.nan  # its result was there
    said: float = math.nan  # the driver said its answer
    scheduled: float = math.nan  # the first sentence went onto the stage
    arrival: float = math.nan  # the first non-silent audio packet reached the customer

    def steps(self) -> dict[str, float]:
        return {
            "hearing the end of speech": self.server_speech_end - self.speech_end,
            "end of turn": self.decided - self.server_speech_end,
            "recognition left after the end of turn": max(self.decided, self.recognised) - self.decided,
            "driver": self.said - max(self.decided, self.recognised),
            "first TTS sentence": self.scheduled - self.said,
            "play-out": self.arrival - self.scheduled,
        }

    @property
    def total(self) -> float:
        return self.arrival - self.speech_end


@dataclass
class BargeTrial:
    ignore_backchannel: bool
    onset: float = math.nan  # the customer's cut-in speech left the microphone
    server_onset: float = math.nan
    decided: float = math.nan
    interrupted: float = math.nan
    silent: float = math.nan  # first packet from which the received audio stays silent
    heard: str = ""

    def steps(self) -> dict[str, float]:
        return {
            "hearing the onset": self.server_onset - self.onset,
            "deciding (speech needed, echo guard)": self.decided - self.server_onset,
            "interrupting": self.interrupted - self.decided,
            "silence reaching the customer": self.silent - self.interrupted,
        }

    @property
    def total(self) -> float:
        return self.silent - self.onset


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > LOUD)
    if loud.size == 0:
        raise RuntimeError("a synthesised clip is silent")
    return int(loud[0]), int(loud[-1]) + 1


async def synthesise(server: h.InProcessServer, texts: Sequence[str]) -> list[Clip]:
    """The questions in the project's own offline English voice, at 48 kHz."""
    from avatar.stage import to_stage_rate

    tts = server.engines.tts
    voice = tts.offline_voice("en")
    clips = []
    for text in texts:
        chunk = await tts.synthesize(text, voice)
        audio = to_stage_rate(chunk.audio, chunk.sample_rate)
        onset, end = speech_bounds(audio)
        clips.append(Clip(text, audio, onset, end))
    return clips


@dataclass
class Received:
    frames: list[tuple[int, float]] = field(default_factory=list)  # (pts, rms) of decoded audio

    def on_frame(self, kind: str, frame: av.frame.Frame, at: float) -> None:
        if isinstance(frame, av.AudioFrame):
            samples = frame.to_ndarray().astype(np.float64)
            self.frames.append((int(frame.pts or 0), float(np.sqrt(np.mean(samples**2)))))


async def run(
    turns: int, barge_ins: int, driver: str, partials: bool, server_settings: dict[str, Any] | None = None
) -> tuple[list[VoiceTurn], list[BargeTrial], dict[str, Any]]:
    received = Received()
    done: list[VoiceTurn] = []
    trials: list[BargeTrial] = []
    extra: dict[str, Any] = {}
    overrides: dict[str, Any] = {
        **(server_settings or {}),
        "driver": driver,
        "silence_prompt_after": 3600.0,
        "silence_close_after": 7200.0,
    }
    async with h.InProcessServer(**overrides) as server, h.http_session() as http:
        loading = server.engines.brain_loading
        while loading is not None and not loading.done():
            print("waiting for the brain to load (learnt once, then cached under data/cache/brain)...")
            await asyncio.wait({loading}, timeout=15.0)
        questions = await synthesise(server, QUESTIONS)
        long_question, cut_in, warm_up = await synthesise(server, (LONG_QUESTION, CUT_IN, WARM_UP))
        # The echo driver says each question back: its sentences must not be in the TTS cache
        # from synthesising the customer's clips.
        server.engines.tts.clear_cache()
        mic = Microphone()
        with h.ReceiveProbe() as probe:
            customer = h.Customer(on_frame=received.on_frame, probe=probe)
            customer.pc.addTrack(mic)  # the recvonly audio transceiver becomes sendrecv
            try:
                sid = await customer.connect(http, server.url)
                session = server.sessions.get(sid)
                if session is None:
                    raise RuntimeError("the session vanished")
                for _ in range(200):
                    if session.listener is not None:
                        break
                    await asyncio.sleep(0.05)
                listener = session.listener
                if listener is None:
                    raise RuntimeError("the server never started listening to the microphone")
                if not partials:
                    listener.config = dataclasses.replace(listener.config, partials=False)
                extra["recognizer"] = listener.recognizer.name
                extra["window"] = getattr(listener.recognizer, "window", None)
                extra["config"] = listener.config
                stage = session.stage
                origin = time.monotonic() - stage.clock.time()  # stage clock 0, as monotonic
                records: list[Any] = []
                cuts: list[Any] = []
                says: list[float] = []
                schedules: list[float] = []
                listener.on_turn = records.append
                listener.on_barge_in = cuts.append
                say, schedule = session.say, stage.schedule

                def timed_say(*args: Any, **kwargs: Any) -> Any:
                    says.append(time.monotonic())
                    return say(*args, **kwargs)

                def timed_schedule(chunk: Any, mouth: Any) -> Any:
                    schedules.append(time.monotonic())
                    return schedule(chunk, mouth)

                recognitions = {"speculative": 0, "partial": 0}
                transcribe = listener.recognizer.transcribe

                async def counted_transcribe(
                    audio: Any, lang: Any = None, prompt: Any = None, *, partial: bool = False
                ) -> Any:
                    recognitions["partial" if partial else "speculative"] += 1
                    return await transcribe(audio, lang, prompt, partial=partial)

                # Instance attributes shadow the methods the server calls (benchmark-only hooks).
                setattr(listener.recognizer, "transcribe", counted_transcribe)  # noqa: B010
                setattr(session, "say", timed_say)  # noqa: B010
                setattr(stage, "schedule", timed_schedule)  # noqa: B010
                audio_log = customer.audio_log
                assert audio_log is not None

                def arrival(pts: int) -> float:
                    rtp_origin = h.rtp_origin(customer.audio_receiver)
                    assert rtp_origin is not None
                    return audio_log.frame_arrival.get((rtp_origin + pts) % (1 << 32), math.nan)

                async def idle(within: float = 30.0, quiet: float = 0.8) -> None:
                    """Until the avatar is idle and ``quiet`` seconds have passed without a voiced
                    packet (the brain may say a second line after its answer)."""
                    deadline = time.monotonic() + within
                    while True:
                        mark = len(received.frames)
                        await asyncio.sleep(quiet)
                        voiced = any(rms >= VOICED_RMS for _, rms in received.frames[mark:])
                        if session.state == "idle" and not session.speaker.busy and not voiced:
                            return
                        if time.monotonic() > deadline:
                            raise RuntimeError(
                                f"the avatar never went idle: state {session.state}, activity "
                                f"{session.activity}, speaker {session.speaker.state} (busy "
                                f"{session.speaker.busy}), in turn {listener.endpointer.in_turn}; "
                                f"last turns {records[-3:]}"
                            )
                        await asyncio.sleep(0.05)

                async def first_voiced(mark: int, within: float = 20.0) -> tuple[int, float]:
                    deadline = time.monotonic() + within
                    while time.monotonic() < deadline:
                        hit = next((f for f in received.frames[mark:] if f[1] >= VOICED_RMS), None)
                        if hit is not None:
                            return hit
                        await asyncio.sleep(0.005)
                    raise RuntimeError("no voiced audio arrived")

                from avatar.server.operator_routes import OPERATORS

                desk = server.app[OPERATORS].desk
                reasons: list[str] = []
                await asyncio.sleep(2.0)  # frames flowing both ways, buffers primed
                # One warm-up turn (first recognition and synthesis of the run), not counted.
                for number, clip in enumerate([warm_up, *questions[:turns]]):
                    if number == 1:
                        hits = server.engines.tts.cache_hits
                        counted = dict(recognitions)
                    await idle()
                    mark, known = len(received.frames), len(records)
                    said = mic.say(clip)
                    await said.done.wait()
                    hit = await first_voiced(mark)
                    for _ in range(100):
                        if len(records) > known:
                            break
                        await asyncio.sleep(0.05)
                    if session.handoff_reason is not None:
                        # The brain handed over (a lost card is an agent's job): an operator
                        # releases the waiting session, so the next question reaches the brain.
                        reasons.append(session.handoff_reason)
                        await desk.handback(sid, "bench", "benchmark: the next question")
                    if number == 0:
                        continue
                    turn = VoiceTurn(clip.text, speech_end=said.end, arrival=arrival(hit[0]))
                    record = records[known] if len(records) > known else None
                    if record is not None:
                        turn.heard = record.text
                        turn.server_speech_end = origin + record.speech_end
                        turn.decided = origin + record.decided_at
                        turn.how, turn.reused = record.how, record.reused_speculation
                        turn.recognition = record.recognition_done - record.recognition_started
                        turn.recognised = origin + record.recognition_done
                    turn.said = next((t for t in says if t >= turn.decided - 1e-3), math.nan)
                    turn.scheduled = next((t for t in schedules if t >= turn.said - 1e-3), math.nan)
                    done.append(turn)
                    print(f"turn {len(done):2d}: {turn.total * 1000:5.0f} ms  {turn.how:6s} {turn.heard!r}")
                extra["tts_cache_hits"] = server.engines.tts.cache_hits - hits
                extra["handoffs"] = reasons
                extra["recognitions"] = {key: recognitions[key] - counted[key] for key in recognitions}
                from avatar.speech.bargein import BargeInGuard

                configured = listener.config.bargein
                settings = [configured.ignore_backchannel, not configured.ignore_backchannel]
                for ignore in settings if barge_ins else []:
                    # A fresh guard per setting (swapped between frames: benchmark-only).
                    listener.guard = BargeInGuard(dataclasses.replace(configured, ignore_backchannel=ignore))
                    for _ in range(barge_ins):
                        await idle()
                        mark = len(received.frames)
                        said = mic.say(long_question)
                        await said.done.wait()
                        await first_voiced(mark)
                        await asyncio.sleep(1.5)  # into the reply
                        known = len(cuts)
                        cut = mic.say(cut_in)
                        await cut.done.wait()
                        trial = BargeTrial(ignore, onset=cut.onset)
                        if len(cuts) > known:
                            record = cuts[known]
                            trial.server_onset = origin + record.onset
                            trial.decided = origin + record.decided_at
                            trial.interrupted = origin + record.interrupted_at
                            trial.heard = record.cut_text or ""
                        # The first received frame after the onset from which 200 ms stay silent.
                        frames = [(arrival(pts), rms) for pts, rms in received.frames[mark:]]
                        frames = [f for f in frames if f[0] >= trial.onset]
                        for i in range(len(frames) - 10):
                            if all(rms < SILENT_RMS for _, rms in frames[i : i + 10]):
                                trial.silent = frames[i][0]
                                break
                        trials.append(trial)
                        print(
                            f"barge-in {len(trials):2d} (backchannels {'ignored' if ignore else 'interrupt'}): "
                            f"{trial.total * 1000:5.0f} ms  heard {trial.heard!r}"
                        )
                await idle()
            finally:
                await customer.close()
    return done, trials, extra


def stats(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a | n/a"
    return f"{h.ms(h.median(finite))} | {h.ms(h.p95(finite))}"


DRIVER_WORDS = {
    "brain": "the dialogue brain answers from the knowledge base (the server's default driver)",
    "echo": "the echo driver says each question back",
}


def section(
    runs: list[tuple[str, list[VoiceTurn], dict[str, Any]]], trials: list[BargeTrial], given: str
) -> str:
    """The BENCHMARKS.md section: latency per driver (one column pair each), then barge-in."""
    extra = runs[0][2]
    cfg = extra.get("config")
    count = max(len(turns) for _, turns, _ in runs)
    lines = [
        "## Voice: end of speech to the avatar's answer, and barge-in",
        "",
        f"`{COMMAND}{given}`, on {h.machine_line()}.",
        "",
        f"An aiortc customer speaks {count} banking questions (Piper, the project's voice, sent as Opus in real "
        "time) to the in-process server, once per driver, each run in a fresh server: "
        + "; ".join(f"*{driver}*: {DRIVER_WORDS.get(driver, driver)}" for driver, _, _ in runs)
        + f". Recogniser `{extra.get('recognizer')}`"
        + (f" (encoder window {extra['window']:g} s)" if extra.get("window") else "")
        + f"; partial transcripts {'on' if cfg is None or cfg.partials else 'off'}; end of turn after "
        f"{cfg.commit_question if cfg else '?'} s of silence after the end of the sound when the words read as a "
        f"finished question, {cfg.commit_silence if cfg else '?'} s as another finished sentence, else "
        f"{cfg.endpoint.end_of_turn if cfg else '?'} s after the VAD's end of speech. Times in ms; packets timed "
        "on arrival at the customer.",
    ]
    header = " | ".join(f"{driver}: median | p95" for driver, _, _ in runs)
    lines += ["", f"| end of speech to first avatar audio | {header} |", "|---|" + "---|---|" * len(runs)]
    lines.append("| total | " + " | ".join(stats([t.total for t in turns]) for _, turns, _ in runs) + " |")
    keys = next((list(turns[0].steps()) for _, turns, _ in runs if turns), [])
    for key in keys:
        lines.append(
            f"| {key} | " + " | ".join(stats([t.steps()[key] for t in turns]) for _, turns, _ in runs) + " |"
        )
    lines.append(
        "| (recognition time, overlapping the end of turn) | "
        + " | ".join(stats([t.recognition for t in turns]) for _, turns, _ in runs)
        + " |"
    )
    lines.append("")
    for driver, turns, run_extra in runs:
        if not turns:
            continue
        early = sum(1 for t in turns if t.how == "early")
        reused = sum(1 for t in turns if t.reused)
        right = sum(1 for t in turns if t.heard.strip().lower().rstrip("?.!") == t.text.lower().rstrip("?.!"))
        note = (
            f"- *{driver}*: turns taken on finished words {early}/{len(turns)}; speculative recognition reused "
            f"{reused}/{len(turns)}; transcripts exactly right (case and end punctuation aside) {right}/{len(turns)}"
        )
        if "recognitions" in run_extra:
            spoken = run_extra["recognitions"]
            note += (
                f"; recognitions per turn: {spoken['speculative'] / len(turns):.1f} speculative (the one that "
                f"became the turn's transcript included) and {spoken['partial'] / len(turns):.1f} partial"
            )
        note += (
            f"; TTS cache hits {run_extra.get('tts_cache_hits', '?')} (first pieces of planned answers, "
            "synthesised during the turn's end-of-turn wait; the customer's clips were cleared from the cache "
            "first)"
        )
        if run_extra.get("handoffs"):
            reasons = ", ".join(sorted(set(run_extra["handoffs"])))
            note += (
                f". The brain handed over {len(run_extra['handoffs'])} times ({reasons}): the timed answer is "
                "then its handover line, and an operator released the waiting session before the next question"
            )
        lines.append(note + ".")
    if trials:
        groups = [
            [t for t in trials if t.ignore_backchannel],
            [t for t in trials if not t.ignore_backchannel],
        ]
        groups = [g for g in groups if g]
        header = " | ".join(
            f"{'backchannels ignored' if g[0].ignore_backchannel else 'any speech interrupts'}: median | p95"
            for g in groups
        )
        lines += ["", f"| barge-in: speech onset to silence at the customer | {header} |"]
        lines.append("|---|" + "---|---|" * len(groups))
        lines.append("| total | " + " | ".join(stats([t.total for t in g]) for g in groups) + " |")
        for key in groups[0][0].steps():
            lines.append(
                f"| {key} | " + " | ".join(stats([t.steps()[key] for t in g]) for g in groups) + " |"
            )
        lines += [
            "",
            f"{len(groups[0])} trials per setting (`ignore_backchannel`, configured: "
            f"{extra['config'].bargein.ignore_backchannel}), in the {runs[-1][0]} driver's run: the customer "
            "cuts in 1.5 s into a 5.5 s reply (a long question said back). "
            "Ignoring backchannels means waiting until the speech is longer than one "
            f"({extra['config'].bargein.backchannel_max} s) unless a partial transcript shows other words first.",
        ]
    lines += ["", NOTES]
    return "\n".join(lines)


NOTES = (
    "Reading the figures: *hearing the end of speech* runs to the end of the sound as the server places "
    "it (the end of the last loud speech window) and includes one 20 ms packet and aiortc's audio receive "
    "buffer on the server (tightened to hold 1 packet, 20 ms; aiortc's default holds 4, 80 ms); the server "
    "sees that the sound has ended at the first quiet 32 ms window after it (`avatar.speech.level`), while "
    "Silero's decay tail calls speech for another 40-140 ms. *End of turn* is the silence waited for after "
    "the end of the sound: the question or statement wait (on a timer) when the speculative transcript, "
    "started at that first quiet window, reads finished, or the recognition time if that is longer, else "
    "`end_of_turn` after the VAD's end of speech; *recognition left* is what recognition still needed once "
    "the turn was over; *first TTS sentence* is the driver's line until its first piece is on the stage: "
    "that piece is synthesised while the turn is being confirmed (when the speculative transcript reads "
    "finished, the first piece of the planned answer, the echo's words or the brain's prepared reply, goes "
    "into the TTS cache; nothing is said before the turn is over), so the line finds it cached or joins its "
    "synthesis still in flight. The synthesis is not skipped, it overlaps the end-of-turn wait; a "
    "speculation the customer talks past costs at most that one piece. Quiet moments inside words (a stop "
    "consonant's closure) start speculations too, at most one in flight at a time: the recognitions per "
    "turn count them. On these shared 2-core machines Whisper's time per utterance grows with the load "
    "average (see the asr section for its cost on a quieter machine)."
)


def parse_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as typed server settings (read as ``AVATAR_KEY`` variables would be)."""
    from avatar.config import ConfigError, Settings, load_settings

    raw: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in {f.name for f in dataclasses.fields(Settings)}:
            parser.error(f"--set takes KEY=VALUE with a known setting, not {item!r}")
        raw[key] = value.strip()
    try:
        typed = load_settings(env={f"AVATAR_{key.upper()}": value for key, value in raw.items()})
    except ConfigError as exc:
        parser.error(str(exc))
    return {key: getattr(typed, key) for key in raw}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="questions timed (>= 1; up to 20 distinct)")
    parser.add_argument("--barge-ins", type=int, default=10, help="barge-in trials")
    parser.add_argument(
        "--drivers",
        default="brain,echo",
        help="who answers, one run each, comma-separated (brain, echo); barge-ins run with the last",
    )
    parser.add_argument("--no-partials", action="store_true", help="no partial transcripts while speaking")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting for this run (as in avatar.example.toml), e.g. --set asr_cpu_threads=1",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.turns <= len(QUESTIONS) or args.barge_ins < 0:
        parser.error(f"--turns must be within 1..{len(QUESTIONS)} and --barge-ins not negative")
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    if not drivers or any(d not in DRIVER_WORDS for d in drivers) or len(set(drivers)) != len(drivers):
        parser.error(f"--drivers takes some of {', '.join(DRIVER_WORDS)}, comma-separated, each once")
    settings = parse_settings(parser, args.set)
    given = "".join(
        f" --{name.replace('_', '-')}" + ("" if value is True else f" {value}")
        for name, value in vars(args).items()
        if value != parser.get_default(name) and name not in ("no_write", "set")
    ) + "".join(f" --set {item}" for item in args.set)
    bounded: Callable[..., Any] = h.bounded
    runs: list[tuple[str, list[VoiceTurn], dict[str, Any]]] = []
    trials: list[BargeTrial] = []
    for k, driver in enumerate(drivers):
        last = k == len(drivers) - 1
        print(f"== driver {driver}")
        turns, driver_trials, extra = asyncio.run(
            bounded(
                run(args.turns, args.barge_ins if last else 0, driver, not args.no_partials, settings),
                1200.0,
                "voice benchmark",
            )
        )
        runs.append((driver, turns, extra))
        trials += driver_trials
    text = section(runs, trials, given)
    print(text)
    if not args.no_write:
        write_section("voice", text)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
