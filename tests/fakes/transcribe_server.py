"""A local OpenAI-compatible ``/v1/audio/transcriptions`` endpoint, for ``OpenAIASR``.

It takes the multipart form the OpenAI API takes (``file``, ``model``, ``language``,
``prompt``, ``response_format``), checks the file is a WAV, records each request, and
answers ``{"text": ...}`` (plus ``language`` and ``duration`` with ``verbose_json``).
What text: a canned one (``text``), or the transcript of a real recogniser behind it
(``recognizer``, e.g. ``WhisperASR``), which makes it a small transcription server.

Modes, to test the error paths: ``"ok"``; ``"error"`` (HTTP 500 with a JSON error body);
``"hang"`` (reads the request, never answers until the server closes); ``"bad_json"``.
A key in ``api_key`` makes it answer 401 to requests without ``Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import io
import wave
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

import numpy as np
from aiohttp import web

from avatar.speech.asr.base import SpeechRecognizer

Mode = Literal["ok", "error", "hang", "bad_json"]


@dataclass(frozen=True)
class TranscriptionRequest:
    """One request as the fake received it; ``audio`` is the decoded WAV (int16)."""

    model: str
    language: str | None
    prompt: str | None
    response_format: str | None
    audio: np.ndarray
    sample_rate: int
    authorization: str | None


@dataclass
class FakeTranscribeServer:
    """``async with FakeTranscribeServer(text="...") as server:``, then ``OpenAIASR(server.url)``."""

    text: str = ""
    recognizer: SpeechRecognizer | None = None
    mode: Mode = "ok"
    api_key: str | None = None
    requests: list[TranscriptionRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _port: int = 0
    _closing: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        """The API base URL (what users configure), e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self._port}/v1"

    async def __aenter__(self) -> FakeTranscribeServer:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if self.api_key is not None and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return web.json_response({"error": {"message": "file is required"}}, status=400)
        try:
            with wave.open(io.BytesIO(upload.file.read()), "rb") as wav:
                if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
                    raise wave.Error("expected 16-bit mono")
                rate = wav.getframerate()
                audio = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        except (wave.Error, EOFError) as exc:
            return web.json_response({"error": {"message": f"unreadable audio: {exc}"}}, status=400)
        fields = {
            key: str(form[key]) for key in ("model", "language", "prompt", "response_format") if key in form
        }
        if "model" not in fields:
            return web.json_response({"error": {"message": "model is required"}}, status=400)
        self.requests.append(
            TranscriptionRequest(
                model=fields["model"],
                language=fields.get("language"),
                prompt=fields.get("prompt"),
                response_format=fields.get("response_format"),
                audio=audio,
                sample_rate=rate,
                authorization=request.headers.get("Authorization"),
            )
        )
        if self.mode == "error":
            return web.json_response({"error": {"message": "model overloaded"}}, status=500)
        if self.mode == "hang":
            await self._closing.wait()
            return web.json_response({"error": {"message": "shutting down"}}, status=503)
        if self.mode == "bad_json":
            return web.Response(text="<html>gateway</html>", content_type="text/html")
        text, language = self.text, fields.get("language")
        if self.recognizer is not None:
            transcript = await self.recognizer.transcribe(audio, language, fields.get("prompt"))
            text, language = transcript.text, transcript.lang
        body: dict[str, object] = {"text": text}
        if fields.get("response_format") == "verbose_json":
            body.update(language=language or "english", duration=len(audio) / rate)
        return web.json_response(body)
