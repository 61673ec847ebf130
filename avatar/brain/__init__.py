"""The dialogue brain: a knowledge-grounded customer-service agent in Chinese and English.

Load one ``Brain`` per process and share it; keep one ``DialogueContext`` per conversation::

    brain = Brain.load(None, Path("data"))          # the shipped knowledge base
    context = DialogueContext()
    reply = brain.reply(context, "I lost my card")  # Reply(action="answer", topic="lost_or_stolen_card", ...)

``KB_FORMAT.md`` in this folder documents the knowledge-base files.
"""

from avatar.brain.brain import Brain, Reply, Suggestion
from avatar.brain.compliance import redact
from avatar.brain.kb import Entry, KBError, KnowledgeBase, load_kb
from avatar.brain.llm import LLMSettings
from avatar.brain.policy import DialogueContext

__all__ = [
    "Brain",
    "DialogueContext",
    "Entry",
    "KBError",
    "KnowledgeBase",
    "LLMSettings",
    "Reply",
    "Suggestion",
    "load_kb",
    "redact",
]
