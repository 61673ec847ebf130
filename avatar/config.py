"""Configuration: one object, read once at start.

Sources, later ones winning: built-in defaults, a TOML file (``--config``), environment
variables ``AVATAR_<KEY>`` (e.g. ``AVATAR_PORT``, ``AVATAR_API_TOKEN``), command-line flags.
Keys are flat in the object; in TOML they may sit under any section header
(``[server]``, ``[media]``...), which is only for readability. Unknown keys and
wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


@dataclass(frozen=True)
class IceServer:
    urls: list[str]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class VoiceChoice:
    """The engine and voice an avatar speaks a language with."""

    engine: str
    voice: str | None = None


def _default_voices() -> dict[str, VoiceChoice]:
    # "<avatar>:<lang>" or "*:<lang>" -> voice. Piper is the offline English default;
    # espeak-ng is the offline Mandarin one (no offline neural Mandarin voice ships in a package).
    return {
        "*:en": VoiceChoice("piper", "en_US-joe-medium"),
        "*:zh": VoiceChoice("espeak", "cmn"),
    }


@dataclass(frozen=True)
class Settings:
    # [server]
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    web_dir: Path | None = None  # default: the repository's web/
    api_token: str | None = None
    max_sessions: int = 32
    max_body_bytes: int = 64 * 1024
    ice_servers: list[IceServer] = field(default_factory=list)
    log_level: str = "INFO"
    log_format: str = "text"  # "text" (human-readable lines) or "json" (one JSON object per line)
    # [security]
    tls_cert: Path | None = None  # PEM certificate (chain); with tls_key the server speaks HTTPS
    tls_key: Path | None = None
    allowed_origins: list[str] = field(default_factory=list)  # operator WebSocket origins besides our own
    frame_ancestors: list[str] = field(default_factory=lambda: ["'self'"])  # who may frame the pages (CSP)
    max_sessions_per_client: int = 8  # live sessions per client address (customers behind one NAT share one)
    trusted_proxies: list[str] = field(default_factory=list)  # proxies whose X-Forwarded-For is believed
    access_log_ips: bool = True  # the access log names each request's client address (query values never)
    channel_rate: float = 5.0  # data-channel messages per second per session (sustained) ...
    channel_burst: int = 20  # ... and in a burst
    turn_secret: str | None = None  # coturn static-auth-secret: time-limited TURN credentials for the page
    turn_urls: list[str] = field(default_factory=list)  # e.g. ["turn:turn.example.com:3478?transport=udp"]
    turn_ttl: int = 3600  # seconds a TURN credential stays valid
    metrics_auth: str = "token"  # GET /metrics: "token" (the API token) or "none" (block it at the proxy)
    # [media]
    fps: int = 25
    width: int = 512
    height: int = 512
    video_codec: str = "VP8"  # "VP8" or "H264": preferred codec; VP8 costs a quarter of libx264 here (BENCHMARKS.md)
    default_avatar: str = "anna"
    # [speech]
    default_lang: str = "en"
    tts_fallback_timeout: float = 1.0
    voices: dict[str, VoiceChoice] = field(default_factory=_default_voices)
    edge_tts_url: str | None = None  # override the edge-tts websocket endpoint (tests, proxies)
    # [listening]
    asr_engine: str = "whisper"  # "whisper" (local faster-whisper) or "openai" (a transcription endpoint)
    asr_model_dir: Path | None = None  # a CTranslate2 Whisper model; default: the embedded tiny.en
    asr_url: str | None = None
    asr_model: str = "whisper-1"
    asr_api_key: str | None = None
    asr_timeout: float = 10.0
    asr_cpu_threads: int = 2
    asr_window: float = 10.0  # seconds of audio the local Whisper encoder sees (30: Whisper's own; shorter is faster)
    end_of_turn: float = 0.6  # seconds of silence that end the customer's turn
    end_of_turn_finished: float = 0.5  # ... when the words read as a finished sentence; 0: end_of_turn
    end_of_turn_question: float = 0.2  # ... when they read as a finished question ("...my card?"); 0: as finished
    ignore_backchannel: bool = False  # True: "uh-huh", "嗯" while the avatar speaks do not interrupt it (costs ~0.5 s of barge-in delay)
    silence_prompt_after: float = 20.0  # seconds of customer silence before a gentle prompt
    silence_close_after: float = 60.0  # ... and before a polite goodbye
    # [brain]
    driver: str = "brain"  # who answers customers: "brain" (the dialogue brain) or "echo"
    kb_path: Path | None = None  # a knowledge-base file or folder; default: the shipped one
    llm_url: str | None = None  # an OpenAI-compatible chat endpoint to rephrase answers (off when unset)
    llm_model: str = "qwen2.5:7b-instruct"
    llm_api_key: str | None = None
    llm_timeout: float = 4.0
    # [operator]
    takeover_cut: bool = True  # on takeover, cut the AI's current line (false: let it finish)
    operator_grace: float = 30.0  # seconds a disconnected operator keeps their sessions
    operator_token_ttl: float = 8 * 3600.0  # seconds an operator's sign-in lasts
    holding_line: str = "Let me bring in a colleague who can help you with that. Please stay with me for a moment."
    # [cluster]
    redis_url: str | None = None  # several processes share sessions, operator events, locks and tokens through Redis
    advertise_url: str | None = None  # this process's base URL for its peers (default http://host:port)
    cluster_secret: str | None = None  # authenticates requests forwarded between processes (default: kept in Redis)

    def voice_for(self, avatar: str, lang: str) -> VoiceChoice:
        """The configured voice for ``avatar`` speaking ``lang``, falling back to ``*:lang``."""
        for key in (f"{avatar}:{lang}", f"*:{lang}", f"*:{self.default_lang}"):
            if key in self.voices:
                return self.voices[key]
        raise ConfigError(f"voices: no voice configured for {avatar}:{lang}")


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Convert ``value`` (from TOML or a string from the environment) to the field's type."""
    text = isinstance(value, str)
    try:
        if typ in ("int", int):
            if isinstance(value, bool):
                raise TypeError
            return int(value)
        if typ == "float | None":
            return None if value in (None, "") else float(value)
        if typ in ("float", float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if typ in ("bool", bool):
            if text:
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if not isinstance(value, bool):
                raise TypeError
            return value
        if typ in ("str", str):
            if not isinstance(value, str):
                raise TypeError
            return value
        if typ == "str | None":
            return None if value in (None, "") else str(value)
        if typ in ("Path", "Path | None"):
            if value in (None, "") and typ == "Path | None":
                return None
            if not isinstance(value, str):
                raise TypeError
            return Path(value)
        if typ == "list[str]":
            items = json.loads(value) if text and value.strip().startswith("[") else value
            if isinstance(items, str):
                items = [x.strip() for x in items.split(",") if x.strip()]
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise TypeError
            return list(items)
        if typ == "list[IceServer]":
            items = json.loads(value) if text else value
            if not isinstance(items, list):
                raise TypeError
            servers = []
            for item in items:
                if isinstance(item, str):
                    item = {"urls": [item]}
                urls = item["urls"]
                servers.append(
                    IceServer(
                        urls=[urls] if isinstance(urls, str) else list(urls),
                        username=item.get("username"),
                        credential=item.get("credential"),
                    )
                )
            return servers
        if typ == "dict[str, VoiceChoice]":
            items = json.loads(value) if text else value
            if not isinstance(items, dict):
                raise TypeError
            voices = _default_voices()
            for key, choice in items.items():
                if isinstance(choice, str):
                    engine, _, voice = choice.partition(":")
                    voices[key] = VoiceChoice(engine, voice or None)
                else:
                    voices[key] = VoiceChoice(str(choice["engine"]), choice.get("voice"))
            return voices
    except (TypeError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{name}: invalid value {value!r} ({typ} expected)") from exc
    raise ConfigError(f"{name}: unsupported setting type {typ}")


def _flatten(doc: Mapping[str, Any], fields: set[str]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key not in fields:
            for sub_key, sub_value in value.items():
                flat[sub_key] = sub_value
        else:
            flat[key] = value
    return flat


def load_settings(
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build ``Settings`` from defaults, ``config_file``, ``env`` (``AVATAR_*``) and ``overrides``."""
    env = os.environ if env is None else env
    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror or exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        for key, value in _flatten(doc, set(types)).items():
            if key not in types:
                raise ConfigError(f"{key}: unknown setting in {config_file}")
            values[key] = _coerce(key, types[key], value)
    for name, typ in types.items():
        raw = env.get(f"AVATAR_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(f"AVATAR_{name.upper()}", typ, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    settings = Settings(**values)
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
    if not 0 < s.port < 65536:
        raise ConfigError(f"port: {s.port} is not a TCP port")
    if not 1 <= s.fps <= 60:
        raise ConfigError(f"fps: {s.fps} is outside 1..60")
    for key in ("width", "height"):
        value = getattr(s, key)
        if not 64 <= value <= 2048 or value % 2:
            raise ConfigError(f"{key}: {value} must be even and within 64..2048")
    if s.max_sessions < 1:
        raise ConfigError("max_sessions: must be at least 1")
    if s.video_codec not in ("H264", "VP8"):
        raise ConfigError(f"video_codec: {s.video_codec!r} is not H264 or VP8")
    if s.driver not in ("brain", "echo"):
        raise ConfigError(f"driver: {s.driver!r} is not brain or echo")
    if s.asr_engine not in ("whisper", "openai"):
        raise ConfigError(f"asr_engine: {s.asr_engine!r} is not whisper or openai")
    if s.asr_engine == "openai" and not s.asr_url:
        raise ConfigError("asr_url: required when asr_engine is openai")
    if not 0 < s.asr_window <= 30:
        raise ConfigError("asr_window: must be more than 0 and at most 30 seconds")
    for key in ("end_of_turn_finished", "end_of_turn_question"):
        if getattr(s, key) < 0:
            raise ConfigError(f"{key}: must not be negative")
    if s.operator_grace < 0:
        raise ConfigError("operator_grace: must not be negative")
    if s.operator_token_ttl <= 0:
        raise ConfigError("operator_token_ttl: must be positive")
    for key in ("end_of_turn", "asr_timeout", "llm_timeout", "tts_fallback_timeout", "channel_rate", "turn_ttl"):
        if getattr(s, key) <= 0:
            raise ConfigError(f"{key}: must be positive")
    _validate_security(s)
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"redis_url: {s.redis_url!r} is not a redis://, rediss:// or unix:// URL")
    if s.advertise_url and not s.advertise_url.startswith(("http://", "https://")):
        raise ConfigError(f"advertise_url: {s.advertise_url!r} is not an http:// or https:// URL")


def _validate_security(s: Settings) -> None:
    import ipaddress
    import logging

    if s.log_format not in ("text", "json"):
        raise ConfigError(f"log_format: {s.log_format!r} is not text or json")
    if logging.getLevelName(s.log_level.upper()) not in (10, 20, 30, 40, 50):
        raise ConfigError(f"log_level: {s.log_level!r} is not DEBUG, INFO, WARNING, ERROR or CRITICAL")
    if (s.tls_cert is None) != (s.tls_key is None):
        missing = "tls_key" if s.tls_key is None else "tls_cert"
        raise ConfigError(f"{missing}: tls_cert and tls_key go together")
    for key in ("tls_cert", "tls_key"):
        path = getattr(s, key)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{key}: no such file {str(path)!r}")
    for origin in s.allowed_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(f"allowed_origins: {origin!r} is not an origin like https://desk.example.com")
    for source in s.frame_ancestors:
        if not source or any(c in source for c in "; ,\t\n"):
            raise ConfigError(f"frame_ancestors: {source!r} is not one CSP source ('self', https://a.example)")
    if s.max_sessions_per_client < 1:
        raise ConfigError("max_sessions_per_client: must be at least 1")
    if s.channel_burst < 1:
        raise ConfigError("channel_burst: must be at least 1")
    for proxy in s.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ConfigError(f"trusted_proxies: {proxy!r} is not an IP address or network") from exc
    if s.turn_secret and not s.turn_urls:
        raise ConfigError("turn_urls: required when turn_secret is set")
    for url in s.turn_urls:
        if not url.startswith(("turn:", "turns:")):
            raise ConfigError(f"turn_urls: {url!r} is not a turn: or turns: URL")
    if s.metrics_auth not in ("token", "none"):
        raise ConfigError(f"metrics_auth: {s.metrics_auth!r} is not token or none")
