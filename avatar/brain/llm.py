"""Optional rephrasing by a large language model behind an OpenAI-compatible chat endpoint.

Off unless ``LLMSettings`` are given. The model sees only the customer's words (redacted) and
the knowledge the brain retrieved, and is asked to say that knowledge naturally. Its output is
then checked (``check_grounded``): every number, amount, percentage, web address and named
product in it must appear in the knowledge, it must not ask for secrets, and it must not run
much longer than the knowledge. When the check or the endpoint fails (HTTP error, timeout,
malformed reply), ``rephrase`` returns ``None`` and the brain says the knowledge-base answer
itself. Works with any server speaking ``POST /v1/chat/completions`` (Ollama, vLLM, llama.cpp).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from avatar.brain.compliance import asks_for_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LLMSettings:
    """Where the chat endpoint is. ``url`` is the API base (``http://localhost:11434/v1``) or the
    full ``.../chat/completions`` address; ``api_key`` is sent as a bearer token when set."""

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 8.0
    temperature: float = 0.3
    max_tokens: int = 300

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


_LANG_NAMES = {"en": "English", "zh": "Simplified Chinese"}
_ANSWER_PROMPT = (
    "You are the customer-service voice assistant of a bank. Rephrase the KNOWLEDGE below as a natural, "
    "friendly spoken answer to the customer, in {language}, in at most {sentences} short sentences. Use only "
    "facts stated in the KNOWLEDGE: add no numbers, amounts, fees, rates, dates, time limits, product names, web "
    "addresses or promises that are not in it, and leave out nothing that changes its meaning. Never ask for "
    "passwords, PINs, verification codes or full card or ID numbers. Reply with the answer only."
)
_SMALLTALK_PROMPT = (
    "You are the customer-service voice assistant of a bank. The customer is making small talk. Reply warmly in "
    "{language} in one short sentence, in the spirit of the SUGGESTED REPLY. Give no information, numbers or "
    "product names, and ask for nothing personal. Reply with the sentence only."
)

_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")
_ZH_NUMBER_RE = re.compile(
    r"百分之[零一二两三四五六七八九十百千点]+|[零一二两三四五六七八九十百千万亿]+(?=[元块天日年月周小时分钟秒万亿倍次笔张岁号%％个])"
    r"|[两三四五六七八九十百千万亿]{2,}"
)
_URL_RE = re.compile(r"https?://\S+|www\.\S+|\b[\w-]+\.(?:com|cn|net|org)\b", re.I)
_EN_WORD_RE = re.compile(r"[A-Za-z][\w'&-]*")
_ZH_QUOTED_RE = re.compile(r"[「《“\"]([^」》”\"]{1,20})[」》”\"]")
_ZH_PRODUCT_RE = re.compile(r"[\u4e00-\u9fff]{1,6}(?:金卡|白金卡|钻石卡|信用卡|借记卡|储蓄卡|宝|贷|理财|基金|保险|存单)")
_ALLOWED_NAMES = frozenset({"I", "I'm", "I'll", "I've", "I'd", "OK", "Sure", "Yes", "No", "Hello", "Hi"})


def _digits(text: str) -> set[str]:
    return {re.sub(r"[,]", "", n) for n in _NUMBER_RE.findall(text)}


def check_grounded(output: str, knowledge: str) -> str | None:
    """Why ``output`` is not a faithful rephrasing of ``knowledge``, or ``None`` when it passes.

    Conservative by design: a false rejection only costs the plain knowledge-base answer.
    """
    text = output.strip()
    if not text:
        return "empty output"
    if len(text) > 2.5 * len(knowledge) + 80:
        return "much longer than the knowledge"
    if asks_for_secret(text):
        return "asks for a secret"
    unknown_numbers = _digits(text) - _digits(knowledge)
    if unknown_numbers:
        return f"numbers not in the knowledge: {', '.join(sorted(unknown_numbers))}"
    for match in _ZH_NUMBER_RE.findall(text):
        if match not in knowledge:
            return f"number not in the knowledge: {match}"
    if ("%" in text or "％" in text or "percent" in text.lower()) and not re.search(r"%|％|percent|百分之", knowledge, re.I):
        return "percentage not in the knowledge"
    for url in _URL_RE.findall(text):
        if url.lower() not in knowledge.lower():
            return f"web address not in the knowledge: {url}"
    low_knowledge = knowledge.lower()
    for sentence in re.split(r"(?<=[.!?。！？])\s*", text):
        # Capitalised words after a sentence's first word are names (of products, partners...).
        for word in _EN_WORD_RE.findall(sentence)[1:]:
            if word[0].isupper() and word not in _ALLOWED_NAMES and word.lower() not in low_knowledge:
                return f"name not in the knowledge: {word}"
    for name in _ZH_QUOTED_RE.findall(text) + _ZH_PRODUCT_RE.findall(text):
        if name not in knowledge and not any(name.endswith(part) and part in knowledge for part in _zh_tails(name)):
            return f"product not in the knowledge: {name}"
    return None


def _zh_tails(name: str) -> list[str]:
    # "您的信用卡" is fine when the knowledge says "信用卡": accept a known suffix of the match.
    return [name[i:] for i in range(1, len(name) - 1)]


class Rephraser:
    """A client of one OpenAI-compatible chat endpoint. Blocking (``urllib``); the brain calls it
    from a worker thread in its async path. Stateless and safe to share between threads."""

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings

    def rephrase(self, customer_text: str, knowledge: str, lang: str, sentences: int = 3) -> str | None:
        """The model's rephrasing of ``knowledge`` for ``customer_text`` (already redacted), or
        ``None`` when the endpoint fails or the output does not pass ``check_grounded``."""
        prompt = _ANSWER_PROMPT.format(language=_LANG_NAMES.get(lang, "English"), sentences=sentences)
        user = f"CUSTOMER: {customer_text}\nKNOWLEDGE: {knowledge}"
        return self._checked(prompt, user, knowledge)

    def smalltalk(self, customer_text: str, suggested: str, lang: str) -> str | None:
        """A warmer reply to small talk, or ``None``; held to the same check against ``suggested``."""
        prompt = _SMALLTALK_PROMPT.format(language=_LANG_NAMES.get(lang, "English"))
        user = f"CUSTOMER: {customer_text}\nSUGGESTED REPLY: {suggested}"
        return self._checked(prompt, user, suggested)

    def _checked(self, system: str, user: str, knowledge: str) -> str | None:
        output = self._complete(system, user)
        if output is None:
            return None
        problem = check_grounded(output, knowledge)
        if problem is not None:
            log.warning("LLM output rejected (%s); using the knowledge-base answer", problem)
            return None
        return " ".join(output.split())

    def _complete(self, system: str, user: str) -> str | None:
        body = json.dumps(
            {
                "model": self.settings.model,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens,
                "stream": False,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.settings.api_key:
            headers["Authorization"] = f"Bearer {self.settings.api_key}"
        request = urllib.request.Request(self.settings.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
            content = payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as exc:
            log.warning("LLM endpoint %s answered HTTP %s; using the knowledge-base answer", self.settings.endpoint, exc.code)
            return None
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:  # timeouts are OSErrors
            log.warning("LLM endpoint %s failed (%s); using the knowledge-base answer", self.settings.endpoint, exc)
            return None
        return content if isinstance(content, str) else None
