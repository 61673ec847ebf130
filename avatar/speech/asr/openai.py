"""Recognition through an OpenAI-compatible ``/v1/audio/transcriptions`` endpoint.

Works with OpenAI itself and with the self-hosted servers that speak the same protocol
(faster-whisper-server/speaches, LocalAI, vLLM, whisper.cpp's server in OpenAI mode...).
Each utterance is one multipart POST of a 16 kHz mono WAV with the fields ``model``,
``response_format=json`` and, when given, ``language`` and ``prompt``; the answer is JSON
with at least ``text``. ``Authorization: Bearer <api_key>`` is sent when a key is set.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave
from typing import Any

import aiohttp
import numpy as np

from avatar.speech.asr.base import SAMPLE_RATE, ASRError, Transcript, check_audio
from avatar.timeline import Word

_PATH = "/audio/transcriptions"
_LANGUAGE_CODES = {"english": "en", "chinese": "zh", "mandarin": "zh", "cantonese": "yue"}


def transcriptions_url(url: str) -> str:
    """The full endpoint URL from a base URL (``http://host:8000/v1``) or the full one."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ASRError(f"transcription endpoint must be an http(s) URL, not {url!r}")
    return url if url.endswith(_PATH) else url + _PATH


def wav_bytes(audio16k: np.ndarray) -> bytes:
    """A complete mono 16-bit 16 kHz WAV file holding ``audio16k``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(np.asarray(audio16k, dtype="<i2").tobytes())
    return buffer.getvalue()


class OpenAIASR:
    """Client of an OpenAI-compatible transcription endpoint (one per process).

    ``url`` is the API base (``https://api.openai.com/v1``) or the full
    ``.../audio/transcriptions`` URL; ``timeout`` bounds each request in seconds, connect
    included. Connections are pooled on one ``aiohttp.ClientSession`` created on first use
    in the running event loop; ``aclose`` releases it.
    """

    name = "openai"
    # A network round trip per partial would compete with the final for the same
    # endpoint (and cost money on a paid one): finals only.
    supports_partial = False

    def __init__(
        self, url: str, model: str = "whisper-1", api_key: str | None = None, timeout: float = 10.0
    ) -> None:
        if timeout <= 0:
            raise ASRError(f"transcription timeout must be positive, not {timeout}")
        self.url = transcriptions_url(url)
        self.model = model
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    async def transcribe(
        self,
        audio16k: np.ndarray,
        lang: str | None = None,
        prompt: str | None = None,
        *,
        partial: bool = False,
    ) -> Transcript:
        """Recognise one utterance; see ``SpeechRecognizer.transcribe``."""
        audio = check_audio(audio16k)
        duration = audio.size / SAMPLE_RATE
        form = aiohttp.FormData()
        form.add_field("file", wav_bytes(audio), filename="utterance.wav", content_type="audio/wav")
        form.add_field("model", self.model)
        form.add_field("response_format", "json")
        code = lang.replace("_", "-").split("-")[0].lower() if lang else None
        if code:
            form.add_field("language", code)
        if prompt:
            form.add_field("prompt", prompt)
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        session = self._client()
        try:
            async with session.post(self.url, data=form, headers=headers, timeout=self._timeout) as response:
                body = await response.read()
                if response.status >= 400:
                    detail = body[:300].decode("utf-8", "replace").strip()
                    raise ASRError(
                        f"transcription endpoint {self.url} answered HTTP {response.status}: {detail}"
                    )
        except TimeoutError as exc:
            raise ASRError(
                f"transcription endpoint {self.url} did not answer within {self._timeout_s:g} s"
            ) from exc
        except aiohttp.ClientError as exc:
            raise ASRError(f"cannot reach transcription endpoint {self.url}: {exc}") from exc
        return self._parse(body, code, duration, partial)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A ClientSession belongs to the loop it was made in; a recogniser outliving
            # one loop (tests, a restarted server) gets a fresh session in the next.
            self._session = aiohttp.ClientSession()
            self._session_loop = loop
        return self._session

    def _parse(self, body: bytes, lang: str | None, duration: float, partial: bool) -> Transcript:
        try:
            doc: Any = json.loads(body)
        except ValueError as exc:
            raise ASRError(f"transcription endpoint {self.url} answered with invalid JSON") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
            raise ASRError(f"transcription endpoint {self.url} answered without a text field")
        words: list[Word] = []
        for item in doc.get("words") or ():
            try:
                words.append(Word(str(item["word"]).strip(), float(item["start"]), float(item["end"])))
            except (KeyError, TypeError, ValueError):
                continue  # word times are optional: a malformed entry is dropped, not fatal
        language = lang
        if language is None and isinstance(doc.get("language"), str):
            # verbose_json answers spell the language out ("english"); keep codes as codes.
            language = _LANGUAGE_CODES.get(doc["language"].lower(), doc["language"])
        if isinstance(doc.get("duration"), int | float):
            duration = float(doc["duration"])
        return Transcript(doc["text"].strip(), language, duration, tuple(words), partial=partial)
