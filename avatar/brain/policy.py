"""Dialogue policy pieces: per-conversation context, and the language rules the brain applies
before and after topic recognition (small talk, requests for a person, follow-up questions,
answers to "which one do you mean?"), with the brain's own wording in both languages.

Nothing here holds state across conversations: ``DialogueContext`` is created per
conversation by its owner (the session) and passed to every ``Brain.reply`` call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from avatar.brain.brain import Reply

Role = Literal["customer", "assistant"]
HISTORY_TURNS = 20  # kept per conversation (redacted), for repetition and an operator's view


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str  # redacted


@dataclass
class DialogueContext:
    """One conversation's state. Owned by one session; not shared, not used concurrently.

    ``topic`` is the last topic answered (follow-ups resolve against it); ``failed_turns`` counts
    consecutive turns the brain could not answer (clarify or out of scope); ``pending`` holds
    the topics offered in the last clarifying question; ``history`` keeps the last
    ``HISTORY_TURNS`` turns, redacted; ``last_reply`` is the reply to the latest turn (set
    before ``Brain.reply_stream`` yields its first sentence).
    """

    lang: str | None = None
    topic: str | None = None
    failed_turns: int = 0
    pending: list[str] = field(default_factory=list)
    emotion: float = 0.0
    history: list[Turn] = field(default_factory=list)
    last_reply: Reply | None = None

    def add(self, role: Role, text: str) -> None:
        self.history.append(Turn(role, text))
        del self.history[:-HISTORY_TURNS]

    def customer_turns(self) -> list[str]:
        return [turn.text for turn in self.history if turn.role == "customer"]


# ------------------------------------------------------------------------------ the wording

PHRASES: dict[str, dict[str, str]] = {
    "en": {
        "greeting": "Hello, I'm the bank's virtual assistant. How can I help you today?",
        "thanks": "You're welcome. Is there anything else I can help you with?",
        "goodbye": "Thank you for contacting us. Goodbye!",
        "ack": "Is there anything else I can help you with?",
        "handoff": "Of course. I'm transferring you to a customer service agent now, please hold on.",
        "handoff_repeated_failure": "I'm sorry I couldn't help with that. Let me transfer you to a customer "
        "service agent who can.",
        "handoff_negative_emotion": "I'm sorry for the trouble. I'm transferring you to a customer service "
        "agent right away.",
        "handoff_complaint": "I'm sorry to hear that. I'm transferring you to a colleague who will record your "
        "complaint.",
        "out_of_scope": "I'm sorry, I can only help with questions about our banking services{scope}.",
        "scope": ", such as {items}",
        "clarify": "Just to be sure, which of these do you mean: {options}?",
        "rephrase": "Sorry, I didn't quite understand. Could you say that in another way?",
        "empty": "Sorry, I didn't catch that. Could you say it again?",
        "no_detail": "I don't have separate information on the {aspect} for that. Here is what I can tell you: ",
        "or": " or ",
    },
    "zh": {
        "greeting": "您好，我是银行智能客服，请问有什么可以帮您？",
        "thanks": "不客气，请问还有其他可以帮您的吗？",
        "goodbye": "感谢您的咨询，再见！",
        "ack": "请问还有其他可以帮您的吗？",
        "handoff": "好的，正在为您转接人工客服，请稍候。",
        "handoff_repeated_failure": "抱歉没能帮到您，我为您转接人工客服，请稍候。",
        "handoff_negative_emotion": "非常抱歉给您带来不便，我马上为您转接人工客服。",
        "handoff_complaint": "非常抱歉给您带来不好的体验，我马上为您转接人工客服登记您的投诉。",
        "out_of_scope": "抱歉，我只能解答银行业务相关的问题{scope}。",
        "scope": "，例如{items}",
        "clarify": "为了准确回答，请问您想咨询的是以下哪一项：{options}？",
        "rephrase": "抱歉，我没有听明白，您能换个说法吗？",
        "empty": "抱歉，我没有听清，您能再说一遍吗？",
        "no_detail": "关于{aspect}，我这里没有单独的说明。我能告诉您的是：",
        "or": "，还是",
    },
}
ASPECT_NAMES = {
    "en": {"fee": "cost", "time": "timing", "requirements": "requirements", "limit": "limits", "channel": "channels"},
    "zh": {"fee": "费用", "time": "办理时间", "requirements": "所需材料和条件", "limit": "限额", "channel": "办理渠道"},
}


def phrase(lang: str, key: str) -> str:
    return PHRASES.get(lang, PHRASES["en"])[key]


# ---------------------------------------------------------------------- recognising turns

_HUMAN_EN = re.compile(
    r"\b(?:(?:talk|speak|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|the\s+|some\s+|your\s+)?(?:real\s+|live\s+|actual\s+)?"
    r"(?:human|person|people|agent|operator|representative|someone|somebody|staff|advis[eo]r|manager|consultant)"
    r"|(?:real|live|human|actual)\s+(?:agent|person|operator|representative|being|human)"
    r"|(?:transfer|connect|put)\s+me\s+(?:to|through\s+to|with)\s+(?:a\s+|an\s+|the\s+)?(?:human|person|agent|operator|"
    r"representative|someone|staff|customer service)"
    r"|human\s+(?:help|support|please)|speak\s+to\s+customer\s+service)\b",
    re.IGNORECASE,
)
_HUMAN_EN_SHORT = re.compile(
    r"^(?:an?\s+|the\s+)?(?:human|agent|operator|representative|person|real person)(?:\s+please)?[\s.!]*$", re.IGNORECASE
)
_HUMAN_ZH = re.compile(
    r"转人工|人工客服|人工服务|找人工|接人工|要人工|转接人工|真人客服|人工坐席|^人工[。！!]*$|"
    r"找(?:你们)?(?:经理|客服人员|工作人员|真人)|(?:跟|和|让)(?:真人|客服人员|工作人员|活人)(?:说|谈|聊|讲)"
)

_SMALLTALK: dict[str, list[tuple[str, re.Pattern[str]]]] = {
    "en": [
        ("greeting", re.compile(r"\b(?:hi|hello|hey|hiya|howdy|good (?:morning|afternoon|evening)|greetings|"
                                r"how are you(?: doing)?|how's it going|are you there|anyone there)\b", re.I)),
        ("thanks", re.compile(r"\b(?:thanks|thank you|thank u|thx|cheers|much appreciated|appreciate it|"
                              r"that's helpful|that helps|great help)\b", re.I)),
        ("goodbye", re.compile(r"\b(?:bye|goodbye|good bye|see you|see ya|that's all|that is all|nothing else|"
                               r"have a (?:nice|good) day|no more questions)\b", re.I)),
        ("ack", re.compile(r"^(?:ok|okay|alright|all right|got it|i see|understood|fine|great|cool|sure|yes|no)\b", re.I)),
    ],
    "zh": [
        ("greeting", re.compile(r"你好|您好|早上好|上午好|中午好|下午好|晚上好|嗨|哈喽|在吗|在不在|有人吗")),
        ("thanks", re.compile(r"谢谢|多谢|感谢|辛苦了|麻烦你了")),
        ("goodbye", re.compile(r"再见|拜拜|没有了|没事了|就这些|没别的|没其他")),
        ("ack", re.compile(r"^(?:好的|好|嗯|嗯嗯|知道了|明白了|明白|了解|行|可以|哦|噢|是的|对)")),
    ],
}
_FILLER_EN = re.compile(r"\b(?:so|very|much|a lot|lot|again|for|your|the|help|you|ok|okay|then|all|and|oh|well|please|"
                        r"there|bot|assistant|dear|sir|madam|guys|team|it|that|is|great|good)\b", re.I)
_FILLER_ZH = re.compile(r"[啊呀吧呢哦嘛啦了的呀哈吗喂]|请问|你们|您|你|客服|小姐|先生|好的|非常|太|真|帮助|帮忙|耐心")

ASPECT_PATTERNS: dict[str, re.Pattern[str]] = {
    "fee": re.compile(
        r"\b(?:cost|costs|fee|fees|charge|charges|charged|price|commission|how much (?:is|does|will|would)|"
        r"free of charge|is it free|for free|pay for)\b|手续费|费用|收费|多少钱|要钱|收钱|免费|扣费|年费|工本费",
        re.I,
    ),
    "time": re.compile(
        r"\b(?:how long|how soon|when|what time|how many days|how many hours|take long|arrive|processing time)\b|"
        r"多久|多长时间|几天|什么时候|几点|到账时间|多快|要多长",
        re.I,
    ),
    "requirements": re.compile(
        r"\b(?:documents?|requirements?|required|what do i need|do i need|eligible|eligibility|bring|proof|"
        r"qualif(?:y|ications?))\b|材料|需要什么|要带什么|带什么|条件|要求|证件|资料|资格",
        re.I,
    ),
    "limit": re.compile(
        r"\b(?:limit|limits|maximum|max|minimum|min|how much can i|cap|up to how much|raise|increase|higher|lower)\b|"
        r"限额|额度|上限|下限|最多|最高|最低|限制|提高|调高|提升|调整",
        re.I,
    ),
    "channel": re.compile(
        r"\b(?:where (?:can|do|should) i|where to|online|in the app|by phone|at a branch|in branch|which channel|"
        r"website)\b|哪里办|在哪|哪儿|渠道|网点|柜台|柜面|手机银行|网银|网上银行|怎么办理|去哪",
        re.I,
    ),
}
_ELLIPTICAL_EN = re.compile(
    r"^(?:and|but|also|so|plus|what about|how about|what of|is it|is that|does it|does that|will it|can it|and is|"
    r"and how|and what|and when|and where|then)\b|\b(?:it|that|this|there)\b",
    re.I,
)
_ELLIPTICAL_ZH = re.compile(r"^(?:那|那么|还有|另外|那个|这个|它|然后|再问|顺便|请问那)|呢[？?。！!]*$|它|这个|那个|这样")
_ORDINALS: dict[int, re.Pattern[str]] = {
    0: re.compile(r"^(?:1|one|the first|first|the 1st|1st|option 1|number 1|no\.? ?1)\b|^第?[一1](?:个|项|种)?$|^第一|前面那个|^选?1", re.I),
    1: re.compile(r"^(?:2|two|the second|second|the 2nd|2nd|option 2|number 2|no\.? ?2)\b|^第?[二2](?:个|项|种)?$|^第二|^选?2", re.I),
    2: re.compile(r"^(?:3|three|the third|third|the 3rd|3rd|option 3|number 3|no\.? ?3)\b|^第?[三3](?:个|项|种)?$|^第三|^选?3", re.I),
}
_LAST = re.compile(r"^(?:the last(?: one)?|last one|the latter)\b|^最后(?:一个|那个)|后面那个", re.I)


def wants_human(text: str) -> bool:
    """Whether the customer asks for a human agent ("转人工", "talk to a person", "real agent")."""
    stripped = text.strip()
    return bool(_HUMAN_EN.search(stripped) or _HUMAN_EN_SHORT.match(stripped) or _HUMAN_ZH.search(stripped))


def smalltalk_kind(text: str, lang: str) -> str | None:
    """``greeting``, ``thanks``, ``goodbye`` or ``ack`` when the turn is only that; ``None``
    when it also asks something ("hi, I lost my card" is a question, not a greeting)."""
    found: str | None = None
    rest = text
    for kind, pattern in _SMALLTALK["en"] + _SMALLTALK["zh"]:
        if pattern.search(rest):
            found = found or kind
            rest = pattern.sub(" ", rest)
    if found is None:
        return None
    rest = _FILLER_ZH.sub(" ", _FILLER_EN.sub(" ", rest))
    words = re.findall(r"[A-Za-z0-9]+|[\u3400-\u9fff]", rest)
    return found if len(words) <= 1 else None


def aspect_of(text: str) -> str | None:
    """The follow-up aspect a turn asks about (``fee``, ``time``...), the first one found."""
    for aspect, pattern in ASPECT_PATTERNS.items():
        if pattern.search(text):
            return aspect
    return None


def is_elliptical(text: str, lang: str) -> bool:
    """Whether a turn leans on the previous one ("and what does it cost?", "那手续费呢"): it opens
    with a connective, refers back with a pronoun, or is very short."""
    stripped = text.strip()
    if lang == "zh":
        return bool(_ELLIPTICAL_ZH.search(stripped)) or len(re.sub(r"\W", "", stripped)) <= 6
    return bool(_ELLIPTICAL_EN.search(stripped)) or len(stripped.split()) <= 4


def choice_index(text: str, count: int) -> int | None:
    """Which of ``count`` offered options a reply picks ("the second one", "第一个"), if any."""
    stripped = text.strip().lower().rstrip(".!。！")
    for index, pattern in _ORDINALS.items():
        if index < count and pattern.search(stripped):
            return index
    if _LAST.search(stripped):
        return count - 1
    return None


_SENTENCE_END = re.compile(r"(?<=[。！？；!?;])|(?<=[.])(?=\s+[A-Z0-9\"'“(])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a reply, for speech to start on the first one. Decimal points, e.g. and
    abbreviations inside a sentence do not split it."""
    parts = [part.strip() for part in _SENTENCE_END.split(text)]
    return [part for part in parts if part]
