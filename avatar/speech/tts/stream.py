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
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from avatar.speech.sentences import DEFAULT_FIRST_MAX_UNITS, ends_clause, split_sentences
from avatar.speech.tts.base import Voice
from avatar.speech.tts.registry import TTSRegistry
from avatar.speech.tts.silence import trim_silence
from avatar.timeline import SpeechChunk

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
    lookahead: int = 1,
    first_max_units: int = DEFAULT_FIRST_MAX_UNITS,
) -> AsyncGenerator[SpeechChunk, None]:
    """Yield one ``SpeechChunk`` per sentence of ``text``, in order.

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
                chunk = await tts.synthesize(sentence, voice)
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
