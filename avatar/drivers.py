"""Drivers: who decides what the avatar says. One driver instance per session, so the
per-conversation state (the dialogue context) lives here and never in a shared engine."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from avatar.session import Session

log = logging.getLogger(__name__)


class BrainDriver:
    """The AI: answers from the knowledge base through the shared ``Brain``.

    The brain's reply (topic, confidence, emotion, suggestions) is kept on the session for
    the operator's panel; only the answer text reaches the customer. A handover request marks
    the session as waiting for a human with the brain's reason.
    """

    name = "brain"

    def __init__(self, brain: Any) -> None:
        from avatar.brain import DialogueContext

        self.brain = brain
        self.context = DialogueContext()

    async def on_customer_text(self, session: Session, text: str) -> None:
        reply = await asyncio.to_thread(self.brain.reply, self.context, text)
        session.last_reply = reply.to_dict()
        log.info(
            "session %s: brain %s topic=%s confidence=%.2f emotion=%.2f",
            session.id, reply.action, reply.topic, reply.confidence, reply.emotion,
        )
        if reply.text:
            session.say(reply.text, lang=reply.lang)
        if reply.action == "handoff":
            session.request_handoff(reply.reason or "the brain asked for a human")


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


def make_driver(settings: Any, brain: Any) -> Any:
    """A new driver for one session: the brain when configured and loaded, else the echo driver."""
    from avatar.session import EchoDriver

    if settings.driver == "brain" and brain is not None:
        return BrainDriver(brain)
    return EchoDriver()
