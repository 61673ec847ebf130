"""Logging set-up: readable text lines or one JSON object per line (``log_format``).

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` and, when the
line belongs to a session, ``session_id``: from the ``SESSION_ID`` context variable (set for
a session's own tasks by ``session_context`` and for API requests about a session), or else
from a "session <id>" in the message. Exceptions come as ``exception`` (the traceback text).

No personal data: modules log ids, counts and decisions, never what a customer said or typed,
nor customer ids or names; as a second line of defence every message and traceback passes
through ``avatar.brain.compliance.redact`` (card, ID and phone numbers, e-mail addresses,
codes).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: The session the current task works for (None outside sessions).
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("avatar_session_id", default=None)

_SESSION_IN_MESSAGE = re.compile(r"\b(?:session|stage) ([0-9a-f]{16})\b")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Chatty third-party loggers kept at WARNING.
QUIET = ("aioice", "faster_whisper")


def session_context(session_id: str) -> contextvars.Context:
    """A copy of the current context with ``SESSION_ID`` set: pass it as ``context=`` to
    ``asyncio.create_task`` so every line the task logs names its session."""
    context = contextvars.copy_context()
    context.run(SESSION_ID.set, session_id)
    return context


def _redact(text: str) -> str:
    from avatar.brain.compliance import redact

    return redact(text)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, personal data redacted (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        message = _redact(record.getMessage())
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        session_id = SESSION_ID.get()
        if session_id is None:
            found = _SESSION_IN_MESSAGE.search(message)
            session_id = found.group(1) if found else None
        if session_id is not None:
            entry["session_id"] = session_id
        if record.exc_info:
            entry["exception"] = _redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = _redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False)


class RedactingFormatter(logging.Formatter):
    """The text format, with the same redaction as the JSON one."""

    def format(self, record: logging.LogRecord) -> str:
        return _redact(super().format(record))


def configure_logging(
    level: str = "INFO", log_format: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) in ``log_format``; returns the handler.
    Replaces the root logger's handlers, so calling it twice does not double the lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
