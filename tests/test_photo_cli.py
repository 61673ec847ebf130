"""``avatar avatars add|list|remove`` through the real command line entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avatar.cli import main

FACES = Path(__file__).parent / "data" / "faces"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_environment_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("AVATAR_CONFIG", "AVATAR_DATA_DIR", "AVATAR_WIDTH", "AVATAR_HEIGHT"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.slow
def test_add_list_remove(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    code, out, err = _run(
        capsys, "avatars", "add", "grace", "--photo", str(FACES / "hopper.jpg"), "--title", "Grace", "--data-dir", data
    )
    assert code == 0, err
    assert "added photo avatar 'grace' (Grace)" in out
    meta = json.loads((tmp_path / "data" / "avatars" / "grace" / "avatar.json").read_text())
    assert meta["kind"] == "photo" and meta["title"] == "Grace"

    code, out, _ = _run(capsys, "avatars", "list", "--data-dir", data)
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    assert lines["grace"][1:3] == ["photo", "user"]
    assert lines["astronaut"][1:3] == ["photo", "built-in"]

    code, _, err = _run(capsys, "avatars", "add", "grace", "--photo", str(FACES / "obama.jpg"), "--data-dir", data)
    assert code == 2 and "already exists" in err and "--replace" in err

    code, out, _ = _run(capsys, "avatars", "remove", "grace", "--data-dir", data)
    assert code == 0 and "removed 'grace'" in out
    assert list((tmp_path / "data" / "avatars").iterdir()) == []
    code, _, err = _run(capsys, "avatars", "remove", "grace", "--data-dir", data)
    assert code == 2 and "no user avatar named 'grace'" in err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("photo", "message"),
    [
        ("two_faces.jpg", "2 faces found; use a photo of one person"),
        ("no_face.jpg", "no face found"),
        ("not_an_image.jpg", "not a JPEG or PNG image"),
    ],
)
def test_add_refuses_with_one_line_reason(
    photo: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    code, _out, err = _run(capsys, "avatars", "add", "someone", "--photo", str(FACES / photo), "--data-dir", str(data))
    assert code == 2
    assert err.startswith("avatar: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (data / "avatars").exists() or list((data / "avatars").iterdir()) == []


def test_names_and_built_ins_are_protected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = str(tmp_path / "data")
    code, _, err = _run(capsys, "avatars", "add", "Bad Name", "--photo", str(FACES / "hopper.jpg"), "--data-dir", data)
    assert code == 2 and "invalid avatar name" in err
    code, _, err = _run(capsys, "avatars", "add", "astronaut", "--photo", str(FACES / "hopper.jpg"), "--data-dir", data)
    assert code == 2 and "built-in avatar" in err
    code, _, err = _run(capsys, "avatars", "remove", "astronaut", "--data-dir", data)
    assert code == 2 and "built-in avatar and cannot be removed" in err
    assert (Path(__file__).resolve().parent.parent / "assets" / "avatars" / "astronaut" / "avatar.json").is_file()
