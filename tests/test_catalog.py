"""The avatar catalogue: listing, lookup errors, loading, broken avatars."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from avatar.face_state import FaceState
from avatar.render.catalog import AvatarCatalog, AvatarInfo, UnknownAvatar, default_assets_dir
from avatar.render.illustrated import IllustratedRenderer
from avatar.render.rig import RigError, load_rig, parse_rig

ASSETS = default_assets_dir()


def test_default_assets_dir_is_the_repository_assets() -> None:
    assert ASSETS.name == "assets"
    assert (ASSETS / "avatars" / "anna" / "rig.yaml").is_file()
    assert (ASSETS / "avatars" / "leo" / "rig.yaml").is_file()


def test_lists_the_shipped_illustrated_avatars(tmp_path: Path) -> None:
    listed = {a.name: a for a in AvatarCatalog(ASSETS, tmp_path).list()}
    for name in ("anna", "leo"):
        info = listed[name]
        assert info == AvatarInfo(name, "illustrated", info.title, ASSETS / "avatars" / name)
        assert info.title.startswith(name.capitalize())


def _photo_dir(root: Path, name: str, title: str = "Someone") -> Path:
    d = root / "avatars" / name
    d.mkdir(parents=True)
    (d / "avatar.json").write_text(json.dumps({"kind": "photo", "name": name, "title": title}))
    return d


def test_lists_user_photo_avatars_after_the_built_in_ones(tmp_path: Path) -> None:
    _photo_dir(tmp_path, "zed", "Zed from the branch")
    _photo_dir(tmp_path, "amy")
    (tmp_path / "avatars" / "not-an-avatar").mkdir()  # no descriptor: ignored
    (tmp_path / "avatars" / "Bad Name").mkdir()  # invalid name: ignored
    names = [a.name for a in AvatarCatalog(ASSETS, tmp_path).list()]
    built_in = [a.name for a in AvatarCatalog(ASSETS, tmp_path / "none").list()]
    assert names[: len(built_in)] == built_in
    assert names[len(built_in) :] == ["amy", "zed"]
    zed = AvatarCatalog(ASSETS, tmp_path).get("zed")
    assert (zed.kind, zed.title, zed.path) == ("photo", "Zed from the branch", tmp_path / "avatars" / "zed")


def test_avatars_added_later_appear_without_a_restart(tmp_path: Path) -> None:
    catalog = AvatarCatalog(ASSETS, tmp_path)
    assert "newcomer" not in [a.name for a in catalog.list()]
    _photo_dir(tmp_path, "newcomer")
    assert catalog.get("newcomer").kind == "photo"


def test_a_user_avatar_cannot_shadow_a_built_in_one(tmp_path: Path) -> None:
    _photo_dir(tmp_path, "anna")
    catalog = AvatarCatalog(ASSETS, tmp_path)
    assert catalog.get("anna").kind == "illustrated"
    assert [a.name for a in catalog.list()].count("anna") == 1


def test_unknown_avatar_says_what_exists(tmp_path: Path) -> None:
    catalog = AvatarCatalog(ASSETS, tmp_path)
    with pytest.raises(UnknownAvatar) as caught:
        catalog.get("nobody")
    message = str(caught.value)
    assert message.startswith("unknown avatar 'nobody'") and "anna" in message and "leo" in message
    assert isinstance(caught.value, KeyError)
    with pytest.raises(UnknownAvatar):
        catalog.load("nobody", 512, 512)


@pytest.mark.parametrize("name", ["../anna", "Anna", "", "a b", "x" * 65, "anna/..", ".hidden"])
def test_invalid_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnknownAvatar, match="invalid avatar name"):
        AvatarCatalog(ASSETS, tmp_path).get(name)


def test_load_gives_a_fresh_renderer_each_time(tmp_path: Path) -> None:
    catalog = AvatarCatalog(ASSETS, tmp_path)
    one = catalog.load("leo", 320, 240)
    two = catalog.load("leo", 320, 240)
    assert isinstance(one, IllustratedRenderer) and isinstance(two, IllustratedRenderer)
    assert one is not two
    assert (two.width, two.height, two.name) == (320, 240, "leo")
    assert np.array_equal(one.render(FaceState()), two.render(FaceState()))
    with pytest.raises(ValueError, match="even"):
        catalog.load("leo", 321, 240)


def test_shipped_photo_avatar_loads_through_the_catalogue(tmp_path: Path) -> None:
    photos = [a for a in AvatarCatalog(ASSETS, tmp_path).list() if a.kind == "photo"]
    if not photos:
        pytest.skip("no photo avatar ships in assets/avatars")
    renderer = AvatarCatalog(ASSETS, tmp_path).load(photos[0].name, 256, 256)
    assert renderer.render(FaceState()).shape == (256, 256, 3)


def test_a_photo_avatar_with_missing_files_fails_clearly(tmp_path: Path) -> None:
    _photo_dir(tmp_path, "halfdone")
    with pytest.raises(UnknownAvatar, match="'halfdone' cannot be loaded"):
        AvatarCatalog(ASSETS, tmp_path).load("halfdone", 256, 256)


def _assets_with_rig(
    tmp_path: Path, name: str, edit: dict[str, object] | None = None, raw: str | None = None
) -> Path:
    """A private assets tree holding a copy of Anna's rig as ``name``, optionally edited."""
    assets = tmp_path / "assets"
    target = assets / "avatars" / name
    target.mkdir(parents=True)
    data = yaml.safe_load((ASSETS / "avatars" / "anna" / "rig.yaml").read_text())
    data["name"] = name
    for dotted, value in (edit or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    (target / "rig.yaml").write_text(raw if raw is not None else yaml.safe_dump(data))
    return assets


@pytest.mark.parametrize(
    ("edit", "field", "problem"),
    [
        ({"eyes.half_width": "wide"}, "eyes.half_width", "expected a number"),
        ({"mouth.max_open": 0.9}, "mouth.max_open", "above the maximum"),
        ({"layers.0.shapes.0.fill": "sky-blue"}, "layers[0].shapes[0].fill", "unknown colour 'sky-blue'"),
        ({"layers.1.follows": "tail"}, "layers[1].follows", "'body' or 'head'"),
        ({"brows.colour": "#000000"}, "brows.colour", "unknown field"),
        (
            {"layers.0.shapes.1.clip": "nothing"},
            "layers[0].shapes[1].clip",
            "no earlier shape named 'nothing'",
        ),
        (
            {"layers.0.shapes.0.path": "M 0 0 X 1 1"},
            "layers[0].shapes[0].path",
            "unsupported path command 'X'",
        ),
        ({"motion.pivot": [0.5]}, "motion.pivot", "expected 2 numbers"),
    ],
)
def test_invalid_rig_errors_name_file_and_field(
    tmp_path: Path, edit: dict[str, object], field: str, problem: str
) -> None:
    assets = _assets_with_rig(tmp_path, "broken", edit)
    rig_file = assets / "avatars" / "broken" / "rig.yaml"
    with pytest.raises(RigError) as caught:
        load_rig(rig_file)
    message = str(caught.value)
    assert message.startswith(f"{rig_file}: {field}: "), message
    assert problem in message
    # Through the catalogue: listed nowhere, and asking for it says why.
    catalog = AvatarCatalog(assets, tmp_path / "data")
    assert [a.name for a in catalog.list()] == []
    with pytest.raises(UnknownAvatar) as via_catalog:
        catalog.get("broken")
    assert field in str(via_catalog.value) and "broken" in str(via_catalog.value)


def test_missing_field_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(RigError, match=r"rig\.yaml: mouth: missing"):
        data = yaml.safe_load((ASSETS / "avatars" / "leo" / "rig.yaml").read_text())
        del data["mouth"]
        parse_rig(data, Path("rig.yaml"))
    assets = _assets_with_rig(tmp_path, "garbled", raw="name: garbled\nlayers: [unclosed\n")
    with pytest.raises(RigError, match="not valid YAML"):
        load_rig(assets / "avatars" / "garbled" / "rig.yaml")
    with pytest.raises(RigError, match="cannot read rig"):
        load_rig(tmp_path / "absent.yaml")


def test_rig_name_must_match_its_directory(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    (assets / "avatars" / "copy").mkdir(parents=True)
    shutil.copy(ASSETS / "avatars" / "anna" / "rig.yaml", assets / "avatars" / "copy" / "rig.yaml")
    with pytest.raises(UnknownAvatar, match="must equal the directory name"):
        AvatarCatalog(assets, tmp_path).get("copy")


def test_edited_rig_is_reread(tmp_path: Path) -> None:
    assets = _assets_with_rig(tmp_path, "editable", {"title": "First"})
    catalog = AvatarCatalog(assets, tmp_path / "data")
    assert catalog.get("editable").title == "First"
    rig_file = assets / "avatars" / "editable" / "rig.yaml"
    data = yaml.safe_load(rig_file.read_text())
    data["title"] = "Second"
    rig_file.write_text(yaml.safe_dump(data))
    import os

    stat = rig_file.stat()
    os.utime(rig_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert catalog.get("editable").title == "Second"
