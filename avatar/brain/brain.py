"""The dialogue brain: a knowledge-grounded customer-service agent, Chinese and English.

``Brain.load`` once per process; share it. Each conversation keeps a ``DialogueContext`` and
calls ``brain.reply(context, text)`` (fast, synchronous) or ``brain.reply_stream(context,
text)`` (async, sentence by sentence; calls the optional LLM off the event loop).

A turn is decided in this order:
1. empty input -> ask again; the customer's text is redacted before it is kept;
2. a request for a person -> ``handoff`` (reason ``customer_request``);
3. anger (emotion >= ``ANGER``, or two annoyed turns in a row) -> ``handoff`` (``negative_emotion``);
   a formal complaint -> ``handoff`` (``complaint``);
4. a pick from the options of the previous clarifying question ("the second one") -> that answer;
5. greetings, thanks, goodbyes -> ``smalltalk``;
6. a follow-up on the previous topic ("and what does it cost?", "那手续费呢") -> the topic's
   ``details`` for that aspect, or what its answer says;
7. otherwise topic recognition: a confident topic -> ``answer`` (``handoff`` with reason
   ``topic_flagged`` for entries flagged so); two or three close topics -> ``clarify`` naming
   them; nothing close to the knowledge base -> ``out_of_scope``; else ask to rephrase.
A second unanswered turn in a row (clarify or out of scope) becomes ``handoff``
(``repeated_failure``). Answers are knowledge-base text; investment entries carry the knowledge
base's risk notice, and a customer who types a secret gets a reminder never to share it.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from avatar.brain.classifier import Embedder, IntentModel, Ranking
from avatar.brain.compliance import SECURITY_REMINDER, redact, shares_secret
from avatar.brain.emotion import emotion_score, is_complaint
from avatar.brain.kb import NOTICE_KEYS, Entry, KnowledgeBase, detect_lang, load_kb
from avatar.brain.llm import LLMSettings, Rephraser
from avatar.brain.policy import (
    ASPECT_NAMES,
    ASPECT_PATTERNS,
    DialogueContext,
    aspect_of,
    choice_index,
    is_elliptical,
    phrase,
    smalltalk_kind,
    split_sentences,
    wants_human,
)

Action = Literal["answer", "clarify", "handoff", "smalltalk", "out_of_scope"]

# Decision thresholds on the calibrated topic probabilities (see LanguageClassifier).
ANSWER = 0.5  # answer the best topic at or above this probability...
CLOSE = 0.5  # ...unless the runner-up has at least this fraction of its probability
CANDIDATE = 0.1  # topics at or above this probability are offered in a clarifying question
# Out of scope: the nearest known question is further than OUT_OF_SCOPE_MARGIN below the
# knowledge base's own in-domain similarity (a low percentile, fitted at load time), or below it
# at all while no topic reaches ANSWER. Chosen on BANKING77 test, the Chinese cases and
# tests/data/brain/out_of_scope.csv: under 1% of in-domain turns, over 90% of unrelated ones.
OUT_OF_SCOPE_MARGIN = 0.02
ANGER = 0.75
ANNOYED = 0.5
SUGGESTIONS = 3


@dataclass(frozen=True)
class Suggestion:
    """A knowledge answer an operator may use: topic id, its first question, answer, probability."""

    topic: str
    question: str
    answer: str
    score: float


@dataclass(frozen=True)
class Reply:
    """The brain's reply to one turn.

    ``action``: answer | clarify | handoff | smalltalk | out_of_scope. ``topic``: the entry
    answered or handed over (``None`` otherwise). ``confidence``: probability of the recognised
    topic (1.0 for rules such as small talk). ``emotion``: the turn's frustration score in [0, 1].
    ``reason``: why a handoff happens (customer_request, repeated_failure, negative_emotion,
    complaint, topic_flagged), or ``None``. ``suggestions``: the top knowledge answers, for an
    operator. ``rephrased``: the text came from the LLM (checked against the knowledge).
    """

    action: Action
    topic: str | None
    confidence: float
    text: str
    emotion: float
    reason: str | None
    suggestions: list[Suggestion]
    lang: str
    rephrased: bool = False

    @property
    def sentences(self) -> list[str]:
        return split_sentences(self.text)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["suggestions"] = [asdict(s) for s in self.suggestions]
        return data


@dataclass
class _Draft:
    """A reply being decided; ``knowledge`` is what an LLM may rephrase (``None``: say as is)."""

    action: Action
    text: str
    topic: str | None = None
    confidence: float = 1.0
    reason: str | None = None
    lang: str = "en"
    knowledge: str | None = None
    smalltalk: bool = False
    failed: bool = False
    pending: list[str] = field(default_factory=list)
    suffix: str = ""  # said after the (possibly rephrased) text: the risk notice
    # Filled in by Brain._decide for every turn:
    emotion: float = 0.0
    redacted: str = ""  # the customer's text, redacted (what is kept and what an LLM sees)
    suggestions: list[Suggestion] = field(default_factory=list)


class _Recognition:
    """Topic recognition of one turn, computed at most once and only when a rule needs it."""

    def __init__(self, model: IntentModel, text: str, lang: str) -> None:
        self._model, self._text, self._lang = model, text, lang
        self._ranking: Ranking | None = None

    @property
    def done(self) -> bool:
        return self._ranking is not None

    def get(self) -> Ranking:
        if self._ranking is None:
            self._ranking = self._model.rank(self._text, self._lang)
        return self._ranking


class Brain:
    """The shared, immutable brain: a knowledge base and the topic models learnt from it.

    Thread-safe: it holds no per-conversation state (that is the ``DialogueContext``).
    """

    def __init__(self, kb: KnowledgeBase, model: IntentModel, llm: LLMSettings | None = None) -> None:
        self.kb = kb
        self.model = model
        self.rephraser = Rephraser(llm) if llm is not None else None

    @classmethod
    def load(
        cls,
        kb_path: Path | None,
        data_dir: Path,
        llm: LLMSettings | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        embedder: Embedder | None = None,
    ) -> Brain:
        """Load the knowledge base at ``kb_path`` (default: the shipped one) and its topic models,
        learnt on first use and cached under ``data_dir/cache/brain``. Raises ``KBError``."""
        kb = load_kb(kb_path)
        samples = [(entry.lang, entry.id, q) for entry in kb.entries.values() for q in entry.questions]
        model = IntentModel.build(samples, Path(data_dir) / "cache" / "brain", embedder, progress)
        return cls(kb, model, llm)

    # ------------------------------------------------------------------------------ turns

    def reply(self, context: DialogueContext, text: str) -> Reply:
        """Decide the reply to the customer's ``text`` and update ``context``. Synchronous and
        fast without an LLM; with one, it waits for the endpoint (on an event loop use
        ``areply`` or ``reply_stream``)."""
        draft = self._decide(context, text)
        return self._finish(context, draft, text, self._rephrase(draft))

    async def areply(self, context: DialogueContext, text: str) -> Reply:
        """``reply`` for an event loop: the whole turn (embedding, models, the LLM call if any)
        runs in a worker thread."""
        return await asyncio.to_thread(self.reply, context, text)

    async def reply_stream(self, context: DialogueContext, text: str) -> AsyncIterator[str]:
        """The reply's sentences, for speech to start on the first. ``context.last_reply`` holds
        the whole ``Reply`` (action, reason...) before the first sentence is yielded. With an
        LLM, its whole output is checked before anything is said."""
        reply = await self.areply(context, text)
        for sentence in reply.sentences:
            yield sentence

    def rank(self, text: str, lang: str | None = None) -> Ranking:
        """Topic recognition alone (what ``avatar brain eval`` measures)."""
        return self.model.rank(text, lang or detect_lang(text))

    # --------------------------------------------------------------------------- internals

    def _rephrase(self, draft: _Draft) -> str | None:
        if self.rephraser is None or draft.knowledge is None:
            return None
        if draft.smalltalk:
            return self.rephraser.smalltalk(draft.redacted, draft.knowledge, draft.lang)
        return self.rephraser.rephrase(draft.redacted, draft.knowledge, draft.lang)

    def _decide(self, context: DialogueContext, text: str) -> _Draft:
        stripped = text.strip()
        lang = detect_lang(stripped) if stripped else (context.lang or self.kb.languages()[0])
        redacted = redact(stripped)
        emotion = emotion_score(stripped, context.customer_turns()) if stripped else 0.0
        recognition = _Recognition(self.model, stripped, lang)
        draft = self._route(context, stripped, lang, emotion, recognition)
        if draft.failed and context.failed_turns >= 1:
            draft = _Draft(
                "handoff", self._phrase(lang, "handoff_repeated_failure"), reason="repeated_failure", lang=lang
            )
        # An operator taking over sees the knowledge answers closest to what was asked.
        wanted = recognition.done or (draft.action == "handoff" and bool(stripped))
        if draft.reason == "customer_request":
            # "Talk to a person" has no topic of its own: suggest for what the customer asked before.
            earlier = [t for t in context.customer_turns() if t.strip() and t.strip() != stripped]
            last = earlier[-1] if earlier else None
            draft.suggestions = self._suggestions(self.model.rank(last, detect_lang(last))) if last else []
        else:
            draft.suggestions = self._suggestions(recognition.get()) if wanted else []
        draft.emotion, draft.redacted = emotion, redacted
        return draft

    def _route(
        self, context: DialogueContext, text: str, lang: str, emotion: float, recognition: _Recognition
    ) -> _Draft:
        if not text:
            return _Draft("clarify", self._phrase(lang, "empty"), lang=lang, failed=True)
        if wants_human(text):
            return _Draft("handoff", self._phrase(lang, "handoff"), reason="customer_request", lang=lang)
        if emotion >= ANGER or (emotion >= ANNOYED and context.emotion >= ANNOYED):
            return _Draft(
                "handoff", self._phrase(lang, "handoff_negative_emotion"), reason="negative_emotion", lang=lang
            )
        if is_complaint(text):
            return self._complaint(lang, recognition.get())
        if context.pending:
            index = choice_index(text, len(context.pending))
            if index is not None and context.pending[index] in self.kb.entries:
                return self._answer(self.kb.entries[context.pending[index]], 1.0, lang)
        kind = smalltalk_kind(text, lang)
        if kind is not None:
            canned = self._phrase(lang, kind)
            return _Draft("smalltalk", canned, lang=lang, knowledge=canned, smalltalk=True)
        ranking = recognition.get()
        follow_up = self._follow_up(context, text, lang, ranking)
        if follow_up is not None:
            return follow_up
        return self._from_ranking(lang, ranking)

    def _complaint(self, lang: str, ranking: Ranking) -> _Draft:
        """A complaint goes to a person; the knowledge base's own complaint entry, when it has a
        handoff entry that matches, says how."""
        topic, probability = ranking.topics[0], ranking.probabilities[0]
        entry = self.kb.entries[topic]
        if entry.handoff and probability >= ANSWER:
            return _Draft("handoff", entry.answer, topic=topic, confidence=probability, reason="complaint", lang=entry.lang)
        return _Draft("handoff", self._phrase(lang, "handoff_complaint"), reason="complaint", lang=lang)

    def _follow_up(self, context: DialogueContext, text: str, lang: str, ranking: Ranking) -> _Draft | None:
        if context.topic is None or context.topic not in self.kb.entries:
            return None
        aspect = aspect_of(text)
        if aspect is None or not is_elliptical(text, lang):
            return None
        # "And how long does a transfer take?" names a topic of its own: trust a confident,
        # different recognition over the context.
        if ranking.topics[0] != context.topic and ranking.probabilities[0] >= 0.9 and not _refers_back(text, lang):
            return None
        entry = self.kb.entries[context.topic]
        detail = entry.details.get(aspect)
        if detail is not None:
            return _Draft("answer", detail, topic=entry.id, confidence=1.0, lang=entry.lang, knowledge=detail)
        said = [s for s in split_sentences(entry.answer) if ASPECT_PATTERNS[aspect].search(s)]
        if said:
            body = " ".join(said) if entry.lang == "en" else "".join(said)
            return _Draft("answer", body, topic=entry.id, confidence=1.0, lang=entry.lang, knowledge=body)
        lead = self._phrase(entry.lang, "no_detail").format(aspect=ASPECT_NAMES[entry.lang][aspect])
        draft = self._answer(entry, 1.0, entry.lang)
        draft.text = lead + draft.text
        draft.knowledge = None  # said as is: a rephrasing would drop the "no separate information"
        return draft

    def _from_ranking(self, lang: str, ranking: Ranking) -> _Draft:
        classifier = self.model.classifier_for(lang)
        top, p1 = ranking.topics[0], ranking.probabilities[0]
        p2 = ranking.probabilities[1] if len(ranking.probabilities) > 1 else 0.0
        known = classifier.in_domain_similarity
        near = ranking.nearest_similarity
        # ...or closer to a typical unrelated request (weather, recipes...) than to any question.
        # (An early exit has no similarities: the lexical view was sure of a topic's wording.)
        far = near < known - OUT_OF_SCOPE_MARGIN or (near < known and p1 < ANSWER) or ranking.anchor_similarity > near
        if ranking.embedded and far:
            return _Draft("out_of_scope", self._out_of_scope(lang), confidence=p1, lang=lang, failed=True)
        if p1 >= ANSWER and p2 < CLOSE * p1:
            return self._answer(self.kb.entries[top], p1, lang)
        candidates = [t for t, p in ranking.top(3) if p >= CANDIDATE]
        if len(candidates) >= 2:
            # Titles are often questions; their own "?" inside the list reads as a stray mark.
            names = [self.kb.entries[t].title.rstrip("?？.。!！ ") for t in candidates]
            titles = [f"“{n}”" if lang == "zh" else f'"{n}"' for n in names]
            options = ", ".join(titles[:-1]) + self._phrase(lang, "or") + titles[-1] if lang == "en" else "；".join(
                f"{i + 1}. {t}" for i, t in enumerate(titles)
            )
            return _Draft(
                "clarify",
                self._phrase(lang, "clarify").format(options=options),
                confidence=p1,
                lang=lang,
                failed=True,
                pending=candidates,
            )
        if p1 >= ANSWER:
            return self._answer(self.kb.entries[top], p1, lang)
        return _Draft("clarify", self._phrase(lang, "rephrase"), confidence=p1, lang=lang, failed=True)

    def _answer(self, entry: Entry, confidence: float, lang: str) -> _Draft:
        suffix = ""
        if entry.risk_notice:
            notice = self.kb.notice(entry.lang, "risk")
            if notice:
                suffix = notice
        if entry.handoff:
            return _Draft(
                "handoff", entry.answer, topic=entry.id, confidence=confidence, reason="topic_flagged", lang=entry.lang
            )
        return _Draft(
            "answer", entry.answer, topic=entry.id, confidence=confidence, lang=entry.lang, knowledge=entry.answer, suffix=suffix
        )

    def _out_of_scope(self, lang: str) -> str:
        custom = self.kb.notice(lang, "out_of_scope")
        if custom:
            return custom
        names = list(
            dict.fromkeys(
                e.product_name for e in self.kb.entries.values() if e.lang == lang and e.product_name is not None
            )
        )[:4]
        if not names:
            scope = ""
        elif lang == "zh":
            scope = phrase(lang, "scope").format(items="、".join(names))
        else:
            items = ", ".join(n.lower() for n in names[:-1]) + (" and " if len(names) > 1 else "") + names[-1].lower()
            scope = phrase(lang, "scope").format(items=items)
        return phrase(lang, "out_of_scope").format(scope=scope)

    def _phrase(self, lang: str, key: str) -> str:
        """The brain's own wording, or the knowledge base's ``notices`` override of it (one
        ``handoff`` notice covers every handover reason)."""
        notice_key = "handoff" if key.startswith("handoff") else key
        custom = self.kb.notice(lang, notice_key) if notice_key in NOTICE_KEYS else None
        return custom or phrase(lang, key)

    def _suggestions(self, ranking: Ranking) -> list[Suggestion]:
        out = []
        for topic, probability in ranking.top(SUGGESTIONS):
            entry = self.kb.entries[topic]
            out.append(Suggestion(topic, entry.title, entry.answer, round(probability, 4)))
        return out

    def _finish(self, context: DialogueContext, draft: _Draft, text: str, rephrased: str | None) -> Reply:
        body = rephrased if rephrased is not None else draft.text
        parts = [body]
        if draft.suffix:
            parts.append(draft.suffix)
        if text.strip() and shares_secret(text):
            parts.insert(0, SECURITY_REMINDER.get(draft.lang, SECURITY_REMINDER["en"]))
        joiner = "" if draft.lang == "zh" else " "
        final = joiner.join(p.strip() for p in parts if p.strip())
        reply = Reply(
            action=draft.action,
            topic=draft.topic,
            confidence=round(float(draft.confidence), 4),
            text=final,
            emotion=draft.emotion,
            reason=draft.reason,
            suggestions=draft.suggestions,
            lang=draft.lang,
            rephrased=rephrased is not None,
        )
        stripped = text.strip()
        context.lang = draft.lang if stripped else context.lang
        context.emotion = draft.emotion
        context.failed_turns = context.failed_turns + 1 if draft.failed else 0
        context.pending = list(draft.pending)
        if draft.action == "answer" and draft.topic is not None:
            context.topic = draft.topic
        elif draft.action == "handoff":
            context.topic = draft.topic or context.topic
        if stripped:
            context.add("customer", draft.redacted)
        context.add("assistant", final)
        context.last_reply = reply
        return reply


def _refers_back(text: str, lang: str) -> bool:
    if lang == "zh":
        return bool(re.search(r"^(?:那|那么)|它|这个|呢[？?。]*$", text.strip()))
    return bool(re.search(r"\b(?:it|that|this)\b|^(?:and|what about|how about)\b", text.strip(), re.I))


def print_progress(message: str) -> None:
    """Progress lines for a terminal: on a TTY each line overwrites the last "embedding n/N"
    count; elsewhere (logs, pipes) only stage lines and the final count are printed."""
    counting = message.startswith("embedding")
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{message}" + ("" if counting else "\n"))
        sys.stderr.flush()
        return
    done, _, total = message.rpartition(" ")[2].partition("/")
    if not counting or done == total:
        print(message, file=sys.stderr, flush=True)
