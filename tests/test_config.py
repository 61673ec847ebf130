from __future__ import annotations

from pathlib import Path

import pytest

from avatar.config import ConfigError, IceServer, VoiceChoice, load_settings


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.host, s.port, s.fps, s.width, s.height) == ("127.0.0.1", 8080, 25, 512, 512)
    assert s.ice_servers == [] and s.api_token is None
    assert s.voice_for("anna", "en") == VoiceChoice("piper", "en_US-joe-medium")
    assert s.voice_for("leo", "zh") == VoiceChoice("espeak", "cmn")


def test_toml_env_and_overrides_in_order(tmp_path: Path) -> None:
    config = tmp_path / "avatar.toml"
    config.write_text(
        """
[server]
port = 9000
max_sessions = 4
ice_servers = [{urls = ["turn:turn.example.com:3478"], username = "u", credential = "p"}, "stun:stun.example.com"]

[media]
fps = 30

[speech]
voices = { "leo:en" = "edge:en-US-GuyNeural" }
""",
        encoding="utf-8",
    )
    s = load_settings(config, env={"AVATAR_PORT": "9100", "AVATAR_API_TOKEN": "tok"}, overrides={"fps": 24})
    assert s.port == 9100 and s.max_sessions == 4 and s.fps == 24 and s.api_token == "tok"
    assert s.ice_servers == [
        IceServer(["turn:turn.example.com:3478"], "u", "p"),
        IceServer(["stun:stun.example.com"]),
    ]
    assert s.voice_for("leo", "en") == VoiceChoice("edge", "en-US-GuyNeural")
    assert s.voice_for("anna", "en") == VoiceChoice("piper", "en_US-joe-medium")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AVATAR_PORT": "eighty"}, "AVATAR_PORT"),
        ({"AVATAR_PORT": "70000"}, "port"),
        ({"AVATAR_FPS": "0"}, "fps"),
        ({"AVATAR_WIDTH": "511"}, "width"),
        ({"AVATAR_VIDEO_CODEC": "AV1"}, "video_codec"),
        ({"AVATAR_ICE_SERVERS": "not json"}, "AVATAR_ICE_SERVERS"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env)


def test_unknown_key_and_broken_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 80\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="prot: unknown setting"):
        load_settings(bad, env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        load_settings(broken, env={})
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_settings(tmp_path / "missing.toml", env={})
