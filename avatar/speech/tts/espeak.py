"""espeak-ng: offline formant speech for English and Mandarin, with exact phoneme timings.

The library and its data (Mandarin included) come from the ``espeakng-loader`` wheel and
are driven through the C API with ctypes: ``espeak_Synth`` in synchronous mode calls our
callback with 16-bit PCM at 22 050 Hz and with events; PHONEME events carry the IPA name
and the start time (ms), WORD events the 1-based character position of the word.

espeak-ng keeps its state (current voice, callback, buffers) in globals of the C library,
so the process has one ``EspeakLibrary`` and every call into it holds its lock.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from avatar.speech.lang import Token, word_tokens
from avatar.speech.tts.base import TTSError, Voice
from avatar.timeline import SILENCE, Phoneme, SpeechChunk, Word, cover_exactly

ESPEAK_SAMPLE_RATE = 22050
DEFAULT_VOICES = {"en": "en-us", "zh": "cmn"}
# Names people write for Mandarin that espeak-ng does not know under them.
_VOICE_ALIASES = {"zh": "cmn", "zh-cn": "cmn", "zh_cn": "cmn", "mandarin": "cmn"}

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_STRESS_MARKS = "ˈˌ"
# espeak's Mandarin phonemes that have no IPA spelling in its tables come out as their
# ASCII mnemonics ("s." for the retroflex s): give them their IPA.
_MNEMONIC_IPA = {
    "ph": "pʰ",
    "th": "tʰ",
    "kh": "kʰ",
    "tsh": "tsʰ",
    "tɕh": "tɕʰ",
    "ts.": "tʂ",
    "ts.h": "tʂʰ",
    "s.": "ʂ",
    "i.": "ɻ̩",
    "o-": "ɤ",
    "onɡ": "ʊŋ",
}


class _EventId(ctypes.Union):
    _fields_ = (("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8))


class _Event(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    )


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True, slots=True)
class PhonemeEvent:
    """A phoneme starts at ``time`` seconds; ``symbol`` is espeak's IPA without stress marks
    (``"_"`` for a pause)."""

    symbol: str
    time: float


@dataclass(frozen=True, slots=True)
class WordEvent:
    """A word starts at ``time`` seconds at 0-based character ``position`` of the text."""

    position: int
    time: float


@dataclass(frozen=True, slots=True)
class EspeakOutput:
    audio: np.ndarray  # int16 mono at ESPEAK_SAMPLE_RATE
    phonemes: list[PhonemeEvent]
    words: list[WordEvent]


def ipa_symbol(name: str) -> str | None:
    """espeak's phoneme name as a timeline symbol: stress marks dropped, mnemonics spelt in
    IPA, a pause is silence; ``None`` for a language switch marker such as ``"(en)"``."""
    if name.startswith("(") and name.endswith(")"):
        return None
    symbol = "".join(ch for ch in name if ch not in _STRESS_MARKS)
    return _MNEMONIC_IPA.get(symbol, symbol) or SILENCE


class EspeakLibrary:
    """The process's espeak-ng (from ``espeakng-loader``), serialised by one lock.

    Obtain it with ``EspeakLibrary.shared()``; it loads on first use.
    """

    _shared: ClassVar[EspeakLibrary | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def shared(cls) -> EspeakLibrary:
        """The one instance of the process (espeak-ng's state is global to the C library)."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise TTSError("espeak-ng is not installed: pip install espeakng-loader") from exc
        try:
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data_path = espeakng_loader.get_data_path()
        except (OSError, RuntimeError) as exc:
            raise TTSError(f"espeak-ng could not be loaded from espeakng-loader: {exc}") from exc
        lib.espeak_Initialize.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = (ctypes.c_char_p,)
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = (_SynthCallback,)
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_Synth.argtypes = (
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        )
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = ()
        lib.espeak_Synchronize.restype = ctypes.c_int
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), options)
        if rate <= 0:
            raise TTSError(f"espeak-ng failed to initialise with data at {data_path}")
        self.sample_rate = int(rate)
        self._lib = lib
        self._lock = threading.Lock()
        self._voice: str | None = None
        # Filled by the callback during one espeak_Synth call (under the lock).
        self._pcm: list[bytes] = []
        self._events: list[tuple[int, int, int, str]] = []
        self._callback = _SynthCallback(self._on_synth)  # kept referenced: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(
        self, wav: ctypes._Pointer[ctypes.c_short], samples: int, events: ctypes._Pointer[_Event]
    ) -> int:
        if samples > 0:
            self._pcm.append(ctypes.string_at(wav, samples * 2))
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                name = bytes(event.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((_EVENT_PHONEME, event.text_position, event.audio_position, name))
            elif event.type == _EVENT_WORD:
                self._events.append((_EVENT_WORD, event.text_position, event.audio_position, ""))
            i += 1
        return 0  # go on synthesising

    def _set_voice(self, voice: str) -> None:
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                self._voice = None
                raise TTSError(f"espeak-ng has no voice {voice!r} (try 'en-us', 'en' or 'cmn')")
            self._voice = voice

    def synthesize(self, text: str, voice: str) -> EspeakOutput:
        """Speak ``text`` with espeak voice ``voice`` (blocking). Event times are in seconds."""
        data = text.encode("utf-8")
        with self._lock:
            self._set_voice(voice)
            self._pcm, self._events = [], []
            try:
                status = self._lib.espeak_Synth(
                    data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
                )
                if status != 0:
                    raise TTSError(f"espeak-ng failed to synthesise (status {status})")
                self._lib.espeak_Synchronize()
                pcm, events = self._pcm, self._events
            finally:
                self._pcm, self._events = [], []
        audio = np.frombuffer(b"".join(pcm), dtype=np.int16).copy()
        phonemes: list[PhonemeEvent] = []
        words: list[WordEvent] = []
        for kind, position, ms, name in events:
            if kind == _EVENT_PHONEME:
                symbol = ipa_symbol(name)
                if symbol is not None:
                    phonemes.append(PhonemeEvent(symbol, ms / 1000.0))
            else:
                words.append(WordEvent(position - 1, ms / 1000.0))
        return EspeakOutput(audio, phonemes, words)


class EspeakTTS:
    """The ``"espeak"`` engine: English (``en-us``, ``en``...) and Mandarin (``cmn``) voices.

    ``Voice.voice`` is an espeak voice name; ``None`` picks ``en-us`` or ``cmn`` by
    ``Voice.lang``. Chinese words are espeak's dictionary words ("你好", "银行"), each with
    the characters it reads.
    """

    name = "espeak"

    def __init__(self, executor: Executor | None = None) -> None:
        self._executor = executor  # the TTS pool; None: asyncio's default executor
        self._library: EspeakLibrary | None = None
        self._load_lock = threading.Lock()

    def library(self) -> EspeakLibrary:
        """The shared espeak-ng library, loaded on first use (blocking)."""
        with self._load_lock:
            if self._library is None:
                self._library = EspeakLibrary.shared()
            return self._library

    async def synthesize(self, sentence: str, voice: Voice) -> SpeechChunk:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.synthesize_blocking, sentence, voice)

    def synthesize_blocking(self, sentence: str, voice: Voice) -> SpeechChunk:
        """``synthesize`` without the thread hop, for callers already off the event loop."""
        voice_name = voice.voice or DEFAULT_VOICES.get(voice.lang)
        voice_name = _VOICE_ALIASES.get((voice_name or "").lower(), voice_name)
        if voice_name is None:
            raise TTSError(f"espeak: no default voice for language {voice.lang!r}")
        library = self.library()
        out = library.synthesize(sentence, voice_name)
        duration = len(out.audio) / library.sample_rate
        phonemes = phonemes_from_events(out.phonemes, duration)
        words = words_from_events(sentence, out.words, phonemes)
        return SpeechChunk(
            text=sentence,
            audio=out.audio,
            sample_rate=library.sample_rate,
            phonemes=phonemes,
            words=words,
            lang=voice.lang,
            engine=self.name,
        )


def phonemes_from_events(events: list[PhonemeEvent], duration: float) -> list[Phoneme]:
    """Each phoneme lasts until the next one starts; the last until the audio ends."""
    ordered = sorted(events, key=lambda e: e.time)
    spans = [
        Phoneme(event.symbol, event.time, ordered[k + 1].time if k + 1 < len(ordered) else duration)
        for k, event in enumerate(ordered)
    ]
    return cover_exactly(spans, duration)


def words_from_events(text: str, events: list[WordEvent], phonemes: list[Phoneme]) -> list[Word]:
    """Words of ``text`` timed by espeak's WORD events.

    espeak announces one event per word it reads, at the word's first character. Several
    events on one token ("3.5%" is read "three point five percent") make one word; Chinese
    characters without an event belong to the word before them (espeak reads "你好" as one
    word); English words without one ("the" in "in the", which espeak runs together) share
    the time of the word before them, split by length.
    """
    tokens = word_tokens(text)
    if not tokens:
        return []
    groups: list[tuple[list[Token], float]] = []
    taken = 0  # tokens [0, taken) are in groups
    for event in sorted(events, key=lambda e: e.time):
        index = _token_at(tokens, event.position)
        if index is None or index < taken:
            continue
        if groups:
            groups[-1][0].extend(tokens[taken:index])
            groups.append(([tokens[index]], event.time))
        else:  # tokens before the first event are read with it
            groups.append((tokens[: index + 1], event.time))
        taken = index + 1
    if not groups:
        speech = [p for p in phonemes if p.symbol != SILENCE]
        start = speech[0].start if speech else 0.0
        groups.append(([], start))
    groups[-1][0].extend(tokens[taken:])
    words: list[Word] = []
    for k, (group, start) in enumerate(groups):
        limit = groups[k + 1][1] if k + 1 < len(groups) else phonemes[-1].end
        end = _speech_end(phonemes, start, limit)
        words.extend(split_span(group, start, end))
    return words


def _token_at(tokens: list[Token], position: int) -> int | None:
    """The token holding character ``position``, or the first one after it."""
    for k, token in enumerate(tokens):
        if position < token.end:
            return k
    return None


def _speech_end(phonemes: list[Phoneme], start: float, limit: float) -> float:
    """End of the last non-silent phoneme starting in ``[start, limit)``; ``limit`` if none."""
    end = None
    for ph in phonemes:
        if ph.start >= limit:
            break
        if ph.start >= start - 1e-9 and ph.symbol != SILENCE:
            end = min(ph.end, limit)
    return end if end is not None else max(start, limit)


def split_span(tokens: list[Token], start: float, end: float) -> list[Word]:
    """Words for ``tokens`` read together over ``[start, end]``, timed in proportion to length.

    Chinese characters next to each other in the text join into one word; punctuation or a
    space between two ("您好，我是") keeps them apart; other tokens stay separate words.
    """
    merged: list[str] = []
    previous: Token | None = None
    for token in tokens:
        if token.han and previous is not None and previous.han and previous.end == token.start:
            merged[-1] += token.text
        else:
            merged.append(token.text)
        previous = token
    if not merged:
        return []
    total = sum(len(text) for text in merged)
    words: list[Word] = []
    cursor = start
    for k, text in enumerate(merged):
        stop = end if k == len(merged) - 1 else cursor + (end - start) * len(text) / total
        words.append(Word(text, cursor, stop))
        cursor = stop
    return words
