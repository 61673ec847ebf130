"""Drivers: who decides what the avatar says. One driver instance per session, so the
per-conversation state (the dialogue context) lives here and never in a shared engine."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar.session import Session

log = logging.getLogger(__name__)


class BrainDriver:
    """The AI: answers from the knowledge base through the shared ``Brain``.

    The brain's reply (topic, confidence, emotion, suggestions) is kept on the session for
    the operator's panel; only the answer text reaches the customer. A handover request marks
    the session as waiting for a human with the brain's reason. While the brain is still
    learning (first start), the customer hears a short holding line and the answer follows.
    """

    name = "brain"

    def __init__(self, engines: Any) -> None:
        from avatar.brain import DialogueContext

        self.engines = engines
        self.context = DialogueContext()
        # A reply decided ahead (``prepare``): (text, context before, context after, reply task).
        self._prepared: tuple[str, Any, Any, asyncio.Task[Any]] | None = None
        # The reply task whose answer may still be warmed (``warm_answer``), and that warm-up.
        self._warm_for: asyncio.Task[Any] | None = None
        self._warming: asyncio.Task[None] | None = None

    def note(self, role: str, text: str) -> None:
        """A turn of this conversation that the brain did not answer or say: the customer's lines
        and an operator's lines while a human held the session. After a handback the brain
        continues with the whole conversation in its context (stored redacted, as its own)."""
        from avatar.brain.compliance import redact

        if role not in ("customer", "assistant"):
            raise ValueError(f"unknown role {role!r}")
        if text.strip():
            self.context.add("customer" if role == "customer" else "assistant", redact(text.strip()))

    async def _brain(self, session: Session, lang: str) -> Any:
        if self.engines.brain is not None:
            return self.engines.brain
        loading = self.engines.brain_loading
        if loading is None:
            raise RuntimeError("the dialogue brain is not loaded")
        if not loading.done():
            session.say(HOLDING[lang], lang=lang)
        return await asyncio.shield(loading)

    def prepare(self, session: Session, text: str) -> None:
        """``text`` will probably be the customer's next line (the listener's speculative
        transcript reads finished; the turn is not confirmed yet): decide the reply now, on a
        copy of the context, so that ``on_customer_text`` with the same text and an unchanged
        context only has to say it. Once decided, the first piece of the answer is synthesised
        into the TTS cache (``warm_answer``), so that saying it starts without waiting for the
        synthesis. Nothing is said or recorded here. Not with an LLM (it would call the endpoint
        for a turn that may never come) nor before the brain is loaded."""
        brain = self.engines.brain
        if brain is None or getattr(brain, "rephraser", None) is not None or not text.strip():
            return
        if self._prepared is not None:
            if self._prepared[0] == text:
                return
            self._prepared[3].cancel()
            self._stop_warming()
        ahead = copy.deepcopy(self.context)
        task = session.spawn(asyncio.to_thread(brain.reply, ahead, text), "brain-ahead")
        self._prepared = (text, copy.deepcopy(self.context), ahead, task)
        self._warm_for = task

        def warm(done: asyncio.Task[Any]) -> None:
            if done is not self._warm_for or done.cancelled() or done.exception() is not None:
                return  # withdrawn, or no answer to say
            self._warm_for = None
            reply = done.result()
            if reply.text:
                self._warming = warm_answer(session, reply.text, reply.lang)

        task.add_done_callback(warm)

    def _stop_warming(self) -> None:
        """The prepared answer will not be said: stop warming it (at most its first piece was
        synthesised)."""
        self._warm_for = None
        if self._warming is not None:
            self._warming.cancel()
            self._warming = None

    async def _prepared_reply(self, text: str) -> Any:
        """The reply ``prepare`` decided for ``text``, adopting its context, if the conversation
        has not moved on since; else ``None``."""
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return None
        said, before, after, task = prepared
        if said != text or before != self.context:
            task.cancel()
            self._stop_warming()
            return None
        await asyncio.wait({task})
        if task.cancelled() or task.exception() is not None:
            return None  # decided again, with any error reported there if it persists
        self.context = after
        return task.result()

    async def on_customer_text(self, session: Session, text: str) -> None:
        from avatar.speech.lang import detect_lang

        lang = detect_lang(text)
        try:
            reply = await self._prepared_reply(text)
            if reply is None:
                brain = await self._brain(session, lang)
                reply = await brain.areply(self.context, text)
        except Exception:
            log.exception("session %s: the brain could not answer", session.id)
            session.say(APOLOGY[lang], lang=lang)
            return
        session.last_reply = reply.to_dict()
        log.info(
            "session %s: brain %s topic=%s confidence=%.2f emotion=%.2f",
            session.id, reply.action, reply.topic, reply.confidence, reply.emotion,
        )
        if reply.text:
            session.say(reply.text, lang=reply.lang)
        if reply.action == "handoff":
            session.request_handoff(reply.reason or "the brain asked for a human")


def warm_answer(session: Session, text: str, lang: str | None) -> asyncio.Task[None] | None:
    """Start synthesising the first piece of ``text`` into the TTS cache, with the voice and the
    first-piece cut ``session.say(text, lang=lang)`` will use (``TTSSpeechSource.stream``), so
    that saying it finds the piece cached or joins its synthesis. Nothing is said. Returns the
    session-owned task (cancel it to give up), or ``None`` when the session does not speak
    through the TTS registry. The synthesis runs on the registry's TTS pool."""
    from avatar.session import TTSSpeechSource

    source = session.speaker.source
    if not isinstance(source, TTSSpeechSource) or not text.strip():
        return None

    async def warm() -> None:
        try:
            await source.warm(text, lang)
        except Exception as exc:  # the real call will fall back or report it
            log.warning("session %s: could not warm the answer's first piece: %s", session.id, exc)

    return session.spawn(warm(), "tts-warm")


HOLDING = {"en": "One moment, please.", "zh": "请稍等。"}
APOLOGY = {
    "en": "I'm sorry, I can't answer that right now. Let me find a colleague to help you.",
    "zh": "抱歉，我暂时无法回答，我为您联系人工客服。",
}


async def load_brain_in_background(engines: Any, settings: Any) -> Any:
    """Learn or load the brain in a worker thread and publish it on ``engines``."""
    try:
        engines.brain = await asyncio.to_thread(load_brain, settings)
    except Exception:
        log.exception("the dialogue brain could not be loaded")
        raise
    log.info("the dialogue brain is ready")
    return engines.brain


def load_brain(settings: Any) -> Any:
    """Load the dialogue brain the settings describe (the shipped knowledge base unless
    ``kb_path`` is set; the optional LLM when ``llm_url`` is set). Blocking: the first load
    learns the knowledge base (cached under the data directory afterwards)."""
    from avatar.brain import Brain, LLMSettings

    llm = None
    if settings.llm_url:
        llm = LLMSettings(
            url=settings.llm_url, model=settings.llm_model, api_key=settings.llm_api_key, timeout=settings.llm_timeout
        )
    return Brain.load(settings.kb_path, settings.data_dir, llm=llm, progress=lambda step: log.info("brain: %s", step))


def make_driver(settings: Any, engines: Any) -> Any:
    """A new driver for one session: the brain when configured (loaded or loading), else echo."""
    from avatar.session import EchoDriver

    if settings.driver == "brain" and (engines.brain is not None or engines.brain_loading is not None):
        return BrainDriver(engines)
    return EchoDriver()
