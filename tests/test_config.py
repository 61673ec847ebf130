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


# -- the documented example file and `avatar config check` ---------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "avatar.example.toml"


def _example_lines() -> dict[str, str]:
    """Every ``key = value`` line of the example, set or commented out (``# key = value``)."""
    import re

    found: dict[str, str] = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(?:#\s*)?([a-z_]+)\s*=\s*(.+)$", line)
        if m:
            found[m.group(1)] = f"{m.group(1)} = {m.group(2)}"
    return found


def test_example_file_documents_every_setting() -> None:
    import dataclasses

    from avatar.config import Settings

    fields = {f.name for f in dataclasses.fields(Settings)}
    documented = set(_example_lines())
    assert fields - documented == set(), "settings missing from avatar.example.toml"
    assert documented - fields == set(), "avatar.example.toml names keys that do not exist"


def test_example_values_have_the_right_types() -> None:
    """Commented-out values too: uncommented, each one parses as its setting's type."""
    import dataclasses
    import tomllib

    from avatar.config import Settings, _coerce

    types = {f.name: f.type for f in dataclasses.fields(Settings)}
    for key, line in _example_lines().items():
        value = tomllib.loads(line)[key]
        _coerce(key, types[key], value)  # raises ConfigError naming the key


def test_example_file_loads_with_the_defaults() -> None:
    from avatar.config import Settings

    s = load_settings(EXAMPLE, env={})
    assert s == Settings()


def test_config_check_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from avatar.cli import main

    assert main(["config", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "valid" in out[0] and "http://127.0.0.1:8080/" in out[0]

    bad = tmp_path / "bad.toml"
    for text, key in [
        ("[security]\nmax_sessions_per_client = 0\n", "max_sessions_per_client"),
        ("[security]\nturn_secret = 's'\n", "turn_urls"),
        ("[server]\nlog_format = 'xml'\n", "log_format"),
        ("[security]\ntls_cert = '/nonexistent.pem'\ntls_key = '/nonexistent.key'\n", "tls_cert"),
        ("[security]\ntrusted_proxies = ['not-an-ip']\n", "trusted_proxies"),
        ("[security]\nallowed_origins = 'desk.example.com'\n", "allowed_origins"),
        ("[media]\nfsp = 25\n", "fsp"),
        ("[security]\nframe_ancestors = [\"'self'; script-src *\"]\n", "frame_ancestors"),
    ]:
        bad.write_text(text, encoding="utf-8")
        assert main(["config", "check", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], (text, err)


def test_security_keys_from_the_environment() -> None:
    s = load_settings(
        env={
            "AVATAR_TRUSTED_PROXIES": "127.0.0.1, 10.0.0.0/8",
            "AVATAR_TURN_URLS": '["turn:turn.example.com:3478"]',
            "AVATAR_TURN_SECRET": "s3cret",
            "AVATAR_LOG_FORMAT": "json",
        }
    )
    assert s.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert s.turn_urls == ["turn:turn.example.com:3478"] and s.turn_secret == "s3cret"
    assert s.log_format == "json"
