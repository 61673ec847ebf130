"""A local stand-in for Microsoft's edge TTS websocket service, for the edge-tts client.

It speaks enough of the protocol for ``edge_tts.Communicate``: it takes the
``speech.config`` and ``ssml`` messages, answers ``turn.start``, one ``audio.metadata``
WordBoundary message per word, the MP3 audio in binary frames (2-byte header length,
``Path:audio`` headers, data), and ``turn.end``.

The "speech" is real MP3 (24 kHz mono, 48 kbit/s, encoded with PyAV): one harmonic tone
burst per word of the SSML text, so the announced word times are exactly where the sound is.

Modes, to test the fallback paths: ``"ok"``; ``"reject"`` (the websocket handshake is
refused with HTTP 503); ``"hang"`` (accepts the request and never answers); ``"no_audio"``
(ends the turn without audio).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal
from xml.sax.saxutils import unescape

import av
import numpy as np
from aiohttp import WSMsgType, web

from avatar.speech.lang import word_tokens

Mode = Literal["ok", "reject", "hang", "no_audio"]

SAMPLE_RATE = 24000
TICKS_PER_SECOND = 10_000_000
LEAD_SILENCE = 0.1
GAP = 0.06
TAIL_SILENCE = 0.15
_FRAME_BYTES = 4096

_VOICE_RE = re.compile(r"<voice name='([^']*)'>")
_TEXT_RE = re.compile(r"<prosody[^>]*>(.*)</prosody>", re.S)


@dataclass(frozen=True)
class SpokenWord:
    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Rendition:
    """What the fake answered to one request: the words with their times, and the MP3."""

    voice: str
    text: str
    words: list[SpokenWord]
    mp3: bytes
    duration: float


@dataclass
class FakeEdgeServer:
    """``async with FakeEdgeServer() as server:`` then point an ``EdgeTTS`` at ``server.url``."""

    mode: Mode = "ok"
    renditions: list[Rendition] = field(default_factory=list)
    requests: int = 0
    _runner: web.AppRunner | None = None
    _port: int = 0

    @property
    def url(self) -> str:
        return (
            f"ws://127.0.0.1:{self._port}/consumer/speech/synthesize/readaloud/edge/v1"
            "?TrustedClientToken=fake"
        )

    async def __aenter__(self) -> FakeEdgeServer:
        app = web.Application()
        app.router.add_get("/consumer/speech/synthesize/readaloud/edge/v1", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])  # port 0 asked the OS for a free one
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.mode == "reject":
            return web.Response(status=503, text="service unavailable")
        for param in ("ConnectionId", "Sec-MS-GEC", "Sec-MS-GEC-Version"):
            if param not in request.query:
                return web.Response(status=400, text=f"missing {param}")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        config_seen = False
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            headers, body = _split_text_message(message.data)
            if headers.get("Path") == "speech.config":
                config_seen = "wordBoundaryEnabled" in body
            elif headers.get("Path") == "ssml":
                if self.mode == "hang":
                    continue  # say nothing; the client gives up
                request_id = headers.get("X-RequestId", uuid.uuid4().hex)
                await self._answer(ws, request_id, body, config_seen)
                break
        await ws.close()
        return ws

    async def _answer(self, ws: web.WebSocketResponse, request_id: str, ssml: str, config_seen: bool) -> None:
        voice_match = _VOICE_RE.search(ssml)
        text_match = _TEXT_RE.search(ssml)
        voice = voice_match.group(1) if voice_match else ""
        text = unescape(text_match.group(1)) if text_match else ""
        await ws.send_str(_text_message(request_id, "turn.start", {"context": {"serviceTag": "fake"}}))
        if self.mode == "no_audio":
            await ws.send_str(_text_message(request_id, "turn.end", {}))
            return
        rendition = await asyncio.to_thread(render, voice, text)
        self.renditions.append(rendition)
        if config_seen:
            for word in rendition.words:
                await ws.send_str(_text_message(request_id, "audio.metadata", _boundary(word)))
        header = (
            f"X-RequestId:{request_id}\r\nContent-Type:audio/mpeg\r\n"
            f"X-StreamId:{uuid.uuid4().hex.upper()}\r\nPath:audio\r\n"
        ).encode()
        for offset in range(0, len(rendition.mp3), _FRAME_BYTES):
            chunk = rendition.mp3[offset : offset + _FRAME_BYTES]
            await ws.send_bytes(len(header).to_bytes(2, "big") + header + chunk)
        # The service ends the audio with an empty frame that has no Content-Type.
        tail = f"X-RequestId:{request_id}\r\nPath:audio\r\n".encode()
        await ws.send_bytes(len(tail).to_bytes(2, "big") + tail)
        await ws.send_str(_text_message(request_id, "turn.end", {}))


def _split_text_message(data: str) -> tuple[dict[str, str], str]:
    head, _, body = data.partition("\r\n\r\n")
    headers = {}
    for line in head.split("\r\n"):
        key, _, value = line.partition(":")
        headers[key] = value
    return headers, body


def _text_message(request_id: str, path: str, body: object) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    return (
        f"X-RequestId:{request_id}\r\nContent-Type:application/json; charset=utf-8\r\n"
        f"X-Timestamp:{stamp}\r\nPath:{path}\r\n\r\n{json.dumps(body, ensure_ascii=False)}"
    )


def _boundary(word: SpokenWord) -> dict[str, object]:
    return {
        "Metadata": [
            {
                "Type": "WordBoundary",
                "Data": {
                    "Offset": round(word.start * TICKS_PER_SECOND),
                    "Duration": round((word.end - word.start) * TICKS_PER_SECOND),
                    "text": {"Text": word.text, "Length": len(word.text), "BoundaryType": "WordBoundary"},
                },
            }
        ]
    }


def render(voice: str, text: str) -> Rendition:
    """One tone burst per word (Han characters are words), as MP3, with the word times."""
    words: list[SpokenWord] = []
    pieces = [np.zeros(int(LEAD_SILENCE * SAMPLE_RATE), dtype=np.float32)]
    cursor = LEAD_SILENCE
    for k, token in enumerate(word_tokens(text)):
        seconds = 0.25 if token.han else max(0.15, 0.07 * len(token.text))
        t = np.arange(int(seconds * SAMPLE_RATE), dtype=np.float32) / SAMPLE_RATE
        pitch = 140.0 + 20.0 * (k % 4)
        envelope = np.sin(np.pi * t / seconds) ** 0.5
        tone = sum(np.sin(2 * np.pi * pitch * h * t) / h for h in (1, 2, 3))
        pieces.append((0.4 * envelope * tone).astype(np.float32))
        words.append(SpokenWord(token.text, cursor, cursor + seconds))
        cursor += seconds
        pieces.append(np.zeros(int(GAP * SAMPLE_RATE), dtype=np.float32))
        cursor += GAP
    pieces.append(np.zeros(int(TAIL_SILENCE * SAMPLE_RATE), dtype=np.float32))
    samples = np.concatenate(pieces)
    return Rendition(voice, text, words, encode_mp3(samples), len(samples) / SAMPLE_RATE)


def encode_mp3(samples: np.ndarray) -> bytes:
    """Float mono samples in [-1, 1] at 24 kHz -> a raw MP3 stream at 48 kbit/s."""
    codec = av.CodecContext.create("libmp3lame", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = SAMPLE_RATE
    codec.layout = "mono"
    codec.format = av.AudioFormat("s16p")
    codec.bit_rate = 48000
    codec.open()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)
    frame_size = codec.frame_size or 1152
    out = bytearray()
    for start in range(0, len(pcm), frame_size):
        block = pcm[start : start + frame_size]
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16p", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        for packet in codec.encode(frame):
            out += bytes(packet)
    for packet in codec.encode(None):
        out += bytes(packet)
    return bytes(out)
