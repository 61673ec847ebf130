"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own per app, so
several apps in one process (tests) never share counters.

What is counted where:

- sessions by state, frames sent and late, the A/V offset and viewers per broadcast stage are
  read when scraped, from the session manager, the peers' media tracks and the broadcast stage
  directory: nothing is added to the media path;
- reply latencies come from each session's events (a customer line, then the first caption,
  i.e. the first sentence of the answer starting to play), with the end of the customer's
  speech taken from ``SPEECH_END``, which the listener sets in the task answering a spoken turn;
- handoffs from the session's handoff listeners, takeovers and handbacks from the operator
  routes, errors from error events, HTTP 500s, rate limits and ERROR log records.

The README lists every metric with its type, labels and meaning.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from avatar.clock import AUDIO_RATE

#: Stage-clock time the customer's speech ended, set by the listener in the task that hands a
#: spoken turn to the session (``None``: a typed line). A context variable, so it never leaks
#: from one turn (or session) to another.
SPEECH_END: ContextVar[float | None] = ContextVar("avatar_speech_end", default=None)

#: Seconds: replies are expected well under a few seconds; the tail shows stalls.
LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0)
SESSION_STATES = ("idle", "listening", "thinking", "speaking")
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,31}")


def bounded_label(value: str | None) -> str:
    """A label value from free text: short snake_case words pass (the brain's handoff reasons),
    anything else is "other", so a label can never carry personal data or grow without end."""
    if value and _LABEL.fullmatch(value):
        return value
    return "other"


class _TrackTotals:
    """Frame counts of sessions that have ended (live ones are read from their tracks)."""

    def __init__(self) -> None:
        self.audio_sent = 0
        self.video_sent = 0
        self.video_late = 0


class Metrics:
    """The metrics of one app. ``registry`` is what ``GET /metrics`` exposes."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reply_latency = Histogram(
            "avatar_reply_latency_seconds",
            "Time from the customer's line to the first audio of the avatar's answer",
            ["start"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sessions_started = Counter("avatar_sessions_started", "Sessions started", ["mode"], registry=r)
        self.handoffs = Counter("avatar_handoffs", "Requests for a human operator", ["reason"], registry=r)
        self.takeovers = Counter("avatar_takeovers", "Operator takeovers of a session", registry=r)
        self.handbacks = Counter(
            "avatar_handbacks", "Sessions handed back to the AI by an operator", registry=r
        )
        self.errors = Counter("avatar_errors", "Errors by kind", ["kind"], registry=r)
        self.ended = _TrackTotals()
        #: Live sources read at scrape time (``bind``): the session manager and its peers, and
        #: the broadcast stage directory when the app has one.
        self._manager: Any = None
        self._stages: Callable[[], dict[str, int]] | None = None
        self._peers: dict[str, Any] = {}  # session id -> its Peer (the manager forgets it before end hooks)
        r.register(_LiveCollector(self))

    # -- wiring -----------------------------------------------------------------------------------
    def bind(self, manager: Any, stages: Callable[[], dict[str, int]] | None = None) -> None:
        """Follow ``manager`` (an ``avatar.server.sessions.SessionManager``): each session gets an
        observer when it starts, and its frame counts are kept when it ends. ``stages`` returns
        the viewers of each broadcast stage by stage id."""
        self._manager = manager
        self._stages = stages
        manager.on_session_start.append(self.session_started)
        manager.on_session_end.append(self.session_ended)

    def session_started(self, session: Any) -> None:
        self.sessions_started.labels(bounded_label(getattr(session, "mode", "call"))).inc()
        session.add_sink(SessionObserver(self, session))
        session.handoff_listeners.append(
            lambda _session, reason: self.handoffs.labels(bounded_label(reason)).inc()
        )
        peer = self._manager.peers.get(session.id) if self._manager is not None else None
        if peer is not None:  # broadcast stages have no customer peer
            self._peers[session.id] = peer

    def session_ended(self, session: Any) -> None:
        # Frame counters must not go down when a session ends: its counts join the totals.
        peer = self._peers.pop(session.id, None)
        if peer is not None:
            self.ended.audio_sent += peer.audio.frames_sent
            self.ended.video_sent += peer.video.frames_sent
            self.ended.video_late += peer.video.frames_late

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def expose(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class SessionObserver:
    """A session event sink that times replies: from a customer's final line (and, for a spoken
    turn, from the end of their speech) to the first caption after it, which is sent when the
    answer's first sentence starts playing."""

    def __init__(self, metrics: Metrics, session: Any) -> None:
        self.metrics = metrics
        self.clock = session.stage.clock
        self.pending: tuple[float, float | None] | None = None

    def __call__(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "transcript" and message.get("speaker") == "customer" and message.get("final"):
            self.pending = (self.clock.time(), SPEECH_END.get())
        elif kind == "caption" and self.pending is not None:
            now = self.clock.time()
            text_at, speech_end = self.pending
            self.pending = None
            self.metrics.reply_latency.labels("text").observe(max(0.0, now - text_at))
            if speech_end is not None:
                self.metrics.reply_latency.labels("speech_end").observe(max(0.0, now - speech_end))
        elif kind == "error":
            self.metrics.error("rate_limited" if message.get("code") == "rate_limited" else "customer_event")


class _LiveCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        manager = m._manager
        by_state = GaugeMetricFamily("avatar_sessions", "Live sessions by state", labels=["state"])
        counts = dict.fromkeys(SESSION_STATES, 0)
        if manager is not None:
            for session in list(manager.sessions.values()):
                counts[session.state] = counts.get(session.state, 0) + 1
        for state, count in counts.items():
            by_state.add_metric([state], count)
        yield by_state

        peers = list(m._peers.values())
        sent = CounterMetricFamily("avatar_frames_sent", "Media frames sent to customers", labels=["kind"])
        audio = m.ended.audio_sent + sum(p.audio.frames_sent for p in peers)
        video = m.ended.video_sent + sum(p.video.frames_sent for p in peers)
        sent.add_metric(["audio"], audio)
        sent.add_metric(["video"], video)
        yield sent
        late = CounterMetricFamily(
            "avatar_frames_late", "Video frames that were due before they could be rendered (skipped ahead)"
        )
        late.add_metric([], m.ended.video_late + sum(p.video.frames_late for p in peers))
        yield late

        offset = GaugeMetricFamily(
            "avatar_av_offset_seconds",
            "Audio position minus video position of the live session furthest apart "
            "(positive: the picture lags the voice)",
        )
        worst = 0.0
        for peer in peers:
            value = av_offset(peer)
            if value is not None and abs(value) > abs(worst):
                worst = value
        offset.add_metric([], worst)
        yield offset

        viewers = GaugeMetricFamily(
            "avatar_stage_viewers", "Viewers watching each broadcast stage", labels=["stage"]
        )
        if m._stages is not None:
            for stage_id, count in sorted(m._stages().items()):
                viewers.add_metric([stage_id], count)
        yield viewers

        # The process itself, so a load or soak run can tell a leak from noise.
        tasks = GaugeMetricFamily("avatar_asyncio_tasks", "asyncio tasks alive in the server's event loop")
        try:
            tasks.add_metric([], len(asyncio.all_tasks()))
        except RuntimeError:  # scraped from outside the loop (a test calling collect directly)
            tasks.add_metric([], 0)
        yield tasks
        threads = GaugeMetricFamily("avatar_threads", "Threads alive in the server process")
        threads.add_metric([], threading.active_count())
        yield threads


def av_offset(peer: Any) -> float | None:
    """Seconds between the last audio frame and the last video frame a peer's tracks sent, both
    on the stage's media clock; None before both have sent one."""
    audio, video = peer.audio, peer.video
    if not audio.frames_sent or not video.frames_sent:
        return None
    audio_at = getattr(audio, "last_pts", None)
    video_at = getattr(video, "last_time", None)
    if audio_at is None or video_at is None:
        return None
    return float(audio_at / AUDIO_RATE - video_at)


class ErrorLogCounter(logging.Handler):
    """Counts ERROR (and worse) log records of the ``avatar`` loggers by logger name."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(level=logging.ERROR)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        self.metrics.error(record.name)
