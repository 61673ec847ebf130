"""Streaming speech: a reply spoken sentence by sentence, the next one synthesised while the
current one plays.

One producer task synthesises the sentences in order, one at a time (parallel synthesis
would only make CPU engines slower to deliver the first sentence), into a queue of at most
``lookahead`` finished chunks; the consumer takes them in order. Closing the generator,
or cancelling the task that iterates it, cancels the producer and waits for it: no task
outlives the stream. Iterate it under ``contextlib.aclosing`` so an early ``break`` closes
it at once.

Silence is trimmed where it is only waiting (``avatar.speech.tts.silence``): before the first
piece of the reply, and around the cut where ``split_sentences`` split a sentence in two (the
piece before a cut between two words keeps a short breath; one before a clause break keeps
the voice's own pause). Pauses between whole sentences are the voice's own.

Given ``voice_for`` (language -> voice), a line that mixes Chinese and English is spoken by the
voice of each part's language: every sentence is divided by ``avatar.speech.lang.split_by_lang``,
each part synthesised on its own (and cached on its own), and the parts of one sentence are
joined, with the silence at each join trimmed the same way, into the sentence's one chunk: one
caption per sentence, whose phonemes and words are each part's own engine's, shifted to where
the part starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import numpy as np

from avatar.speech.lang import Lang, clause_lang, split_by_lang
from avatar.speech.resample import resample
from avatar.speech.sentences import DEFAULT_FIRST_MAX_UNITS, ends_clause, split_sentences
from avatar.speech.tts.base import Voice
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.silence import trim_silence
from avatar.timeline import Phoneme, SpeechChunk, Word, cover_exactly

#: Silence kept before the first voiced sample of a reply, and of a piece that goes on with a
#: cut sentence.
LEAD_KEEP = 0.01
#: Silence kept after a piece cut between two words (no punctuation: the voice would not pause).
WORD_CUT_TAIL = 0.05


async def speak_stream(
    tts: TTSRegistry,
    text: str,
    voice: Voice,
    *,
    voice_for: Callable[[str], Voice] | None = None,
    lookahead: int = 1,
    first_max_units: int = DEFAULT_FIRST_MAX_UNITS,
) -> AsyncGenerator[SpeechChunk, None]:
    """Yield one ``SpeechChunk`` per sentence of ``text``, in order.

    Without ``voice_for`` every sentence is spoken by ``voice``. With it, each part of a
    sentence (``split_by_lang``) is spoken by ``voice_for(part language)``; parts with neither
    script count as ``voice.lang``; a sentence's chunk has the language of most of its words.
    At most ``lookahead`` (>= 1) chunks wait for the consumer while one more is being
    synthesised. A sentence no engine could speak raises ``TTSError`` at its turn, after the
    sentences before it were yielded. ``first_max_units`` is passed to ``split_sentences``.
    """
    if lookahead < 1:
        raise ValueError(f"lookahead must be at least 1, got {lookahead}")
    sentences = split_sentences(text, first_max_units=first_max_units)
    if not sentences:
        return
    # The first sentence may have been cut in pieces: the first ``cuts`` pieces each go on in the
    # next one (a line break, say, also ends a sentence without punctuation, and is no cut).
    cuts = len(sentences) - len(split_sentences(text, first_max_units=0))
    ready: asyncio.Queue[SpeechChunk | Exception | None] = asyncio.Queue(maxsize=lookahead)

    async def produce() -> None:
        for i, sentence in enumerate(sentences):
            try:
                chunk = await _speak_sentence(tts, sentence, voice, voice_for)
            except Exception as exc:  # handed to the consumer, in order
                await ready.put(exc)
                return
            lead = LEAD_KEEP if i <= cuts else None  # the reply's start, or a cut sentence going on
            tail = WORD_CUT_TAIL if i < cuts and not ends_clause(sentence) else None
            await ready.put(trim_silence(chunk, lead=lead, tail=tail))
        await ready.put(None)  # the end

    producer = asyncio.create_task(produce(), name="speak_stream.produce")
    try:
        while True:
            item = await ready.get()
            if item is None:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        producer.cancel()
        # wait() rather than await: the producer's CancelledError is its own, not ours.
        await asyncio.wait({producer})


async def warm_first_piece(
    tts: TTSRegistry,
    text: str,
    voice: Voice,
    *,
    voice_for: Callable[[str], Voice] | None = None,
    first_max_units: int = DEFAULT_FIRST_MAX_UNITS,
) -> None:
    """Synthesise into ``tts``'s cache the first piece ``speak_stream`` would speak for the same
    arguments, and nothing else: a later ``speak_stream`` of ``text`` finds that piece cached,
    or joins its synthesis still in flight. Nothing is played. Cancelling this call stops the
    synthesis unless another caller awaits the same piece (``TTSRegistry.synthesize``)."""
    sentences = split_sentences(text, first_max_units=first_max_units)
    if sentences:
        await _speak_sentence(tts, sentences[0], voice, voice_for)


async def _speak_sentence(
    tts: TTSRegistry, sentence: str, voice: Voice, voice_for: Callable[[str], Voice] | None
) -> SpeechChunk:
    """One sentence's chunk: spoken by ``voice``, or part by part in each part's language."""
    default: Lang = "zh" if voice.lang == "zh" else "en"
    parts = split_by_lang(sentence, default) if voice_for is not None else []
    if voice_for is None or len(parts) <= 1:
        lang = parts[0].lang if parts else voice.lang
        return await tts.synthesize(sentence, voice if voice_for is None else voice_for(lang))
    chunks: list[SpeechChunk] = []
    for k, part in enumerate(parts):  # in order, one at a time, like the sentences
        chunk = await tts.synthesize(part.text, voice_for(part.lang))
        # A join is a cut like split_sentences' (see the module doc): the part going on keeps
        # a short lead-in; one ending between two words keeps a short breath.
        lead = LEAD_KEEP if k > 0 else None
        tail = WORD_CUT_TAIL if k < len(parts) - 1 and not ends_clause(part.text) else None
        chunks.append(trim_silence(chunk, lead=lead, tail=tail))
    return join_chunks(sentence, chunks, clause_lang(sentence) or default)


def join_chunks(text: str, chunks: list[SpeechChunk], lang: str) -> SpeechChunk:
    """``chunks`` played one after another as one chunk saying ``text`` in ``lang``.

    The audio is at the first chunk's sample rate (the others resampled to it); each chunk's
    phonemes and words are shifted to where its audio starts. ``engine`` names the engines
    that spoke, joined with "+" ("piper+espeak"), each once.
    """
    if not chunks:
        raise ValueError("nothing to join")
    rate = chunks[0].sample_rate
    audio: list[np.ndarray] = []
    phonemes: list[Phoneme] = []
    words: list[Word] = []
    engines: list[str] = []
    offset = 0  # samples at ``rate``
    for chunk in chunks:
        samples = chunk.audio if chunk.sample_rate == rate else resample(chunk.audio, chunk.sample_rate, rate)
        shift = offset / rate
        scale = (len(samples) / rate) / chunk.duration if chunk.duration > 0 else 1.0
        phonemes.extend(Phoneme(p.symbol, shift + p.start * scale, shift + p.end * scale) for p in chunk.phonemes)
        words.extend(Word(w.text, shift + w.start * scale, shift + w.end * scale) for w in chunk.words)
        audio.append(samples)
        offset += len(samples)
        if chunk.engine not in engines:
            engines.append(chunk.engine)
    joined = np.concatenate(audio).astype(np.int16, copy=False)
    return SpeechChunk(
        text=text,
        audio=joined,
        sample_rate=rate,
        phonemes=cover_exactly(phonemes, len(joined) / rate),
        words=words,
        lang=lang,
        engine="+".join(engines),
    )
