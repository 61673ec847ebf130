"""Broadcast stages against the real app: auth on every stage route, bad input, unknown stages,
limits, the operator desk and the session API on a stage, and in-process aiortc viewers."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from avatar.broadcast.stages import STAGES, StageDirectory, UnknownStage
from avatar.rtc.fanout import OVERLAY_GAP
from avatar.server.app import SESSIONS
from avatar.server.engines import Engines
from avatar.server.operator_routes import OPERATORS
from avatar.store import StageRow, Store
from tests.conftest import make_settings
from tests.rtc_client import RtcCustomer
from tests.test_operator_api import sign_in, wait_until


async def create(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:  # type: ignore[type-arg]
    resp = await client.post("/api/stages", json=body, headers=headers)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def test_create_list_get_delete(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage = await create(client, auth, avatar="leo", driver="script")
    sid = stage["stage_id"]
    assert stage["avatar"] == "leo" and stage["driver"] == "script" and stage["viewers"] == 0
    assert len(stage["view_key"]) >= 32 and stage["view_key"] not in sid
    assert stage["overlay_url"] == f"/overlay.html?stage={sid}&key={stage['view_key']}"

    listed = await (await client.get("/api/stages", headers=auth)).json()
    assert [s["stage_id"] for s in listed["stages"]] == [sid]
    got = await (await client.get(f"/api/stages/{sid}", headers=auth)).json()
    assert got["view_key"] == stage["view_key"]

    # The stage is a session in the manager: the session API works on it.
    session = client.app[SESSIONS].get(sid)
    assert session is not None and session.mode == "broadcast" and session is StageDirectory.session(client.app, sid)
    assert sid not in client.app[SESSIONS].peers
    sessions = await (await client.get("/api/sessions", headers=auth)).json()
    assert sid in [s["session_id"] for s in sessions["sessions"]]
    resp = await client.post(f"/api/sessions/{sid}/say", json={"text": "Welcome to the show."}, headers=auth)
    assert resp.status == 200
    await wait_until(lambda: session.stage.speaking_until() > 0)
    resp = await client.post(f"/api/sessions/{sid}/interrupt", headers=auth)
    assert resp.status == 200

    resp = await client.delete(f"/api/stages/{sid}", headers=auth)
    assert resp.status == 200 and (await resp.json())["status"] == "closed"
    assert client.app[SESSIONS].get(sid) is None and session.closed.is_set()
    assert (await client.get(f"/api/stages/{sid}", headers=auth)).status == 404
    assert (await client.delete(f"/api/stages/{sid}", headers=auth)).status == 404
    try:
        StageDirectory.session(client.app, sid)
        raise AssertionError("a deleted stage is still found")
    except UnknownStage:
        pass


async def test_auth_on_every_stage_route(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage = await create(client, auth)
    sid, key = stage["stage_id"], stage["view_key"]
    routes = [
        ("POST", "/api/stages", {}),
        ("GET", "/api/stages", None),
        ("GET", f"/api/stages/{sid}", None),
        ("DELETE", f"/api/stages/{sid}", None),
    ]
    # No token, a wrong token, the stage id or its view key as a token (what a viewer's page has).
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {sid}"},
                    {"Authorization": f"Bearer {key}"}):
        for method, path, body in routes:
            resp = await client.request(method, path, json=body, headers=headers)
            assert resp.status == 401, (method, path, headers, await resp.text())
            assert "error" in await resp.json()
    assert client.app[STAGES].get(sid) is not None  # nothing above deleted it

    # An operator's token manages stages too, and the desk lists the stage for takeover.
    operator = await sign_in(client, "olga")
    mine = await create(client, operator, driver="operator")
    listed = await (await client.get("/api/stages", headers=operator)).json()
    assert {s["stage_id"] for s in listed["stages"]} == {sid, mine["stage_id"]}
    desk = await (await client.get("/api/operator/sessions", headers=operator)).json()
    assert mine["stage_id"] in [s["session_id"] for s in desk["sessions"]]
    resp = await client.post(f"/api/sessions/{mine['stage_id']}/takeover", headers=operator)
    assert resp.status == 200
    assert client.app[OPERATORS].desk.seats[mine["stage_id"]].holder == "olga"
    resp = await client.post(f"/api/sessions/{mine['stage_id']}/say", json={"text": "Hello viewers."}, headers=operator)
    assert resp.status == 200
    assert (await client.delete(f"/api/stages/{mine['stage_id']}", headers=operator)).status == 200
    assert mine["stage_id"] not in client.app[OPERATORS].desk.seats


async def test_bad_input_and_limits(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    for body, status in (
        ({"driver": "robot"}, 400),
        ({"driver": 3}, 400),
        ({"avatar": ["leo"]}, 400),
        ({"avatar": "nobody"}, 404),
    ):
        resp = await client.post("/api/stages", json=body, headers=auth)
        assert resp.status == status, (body, await resp.text())
        assert "error" in await resp.json()
    resp = await client.post("/api/stages", data=b"{nope", headers=auth)
    assert resp.status == 400 and "malformed JSON" in (await resp.json())["error"]
    resp = await client.post("/api/stages", data=b"[1]", headers=auth)
    assert resp.status == 400
    assert client.app[STAGES].stages == {}

    # No body at all is fine: the default avatar, driven by the brain (the server's AI driver).
    first = await create(client, auth)
    assert first["driver"] == "brain"
    # The app in these tests allows 3 sessions; stages count against it.
    client.app[STAGES].max_stages = 2
    await create(client, auth)
    resp = await client.post("/api/stages", json={}, headers=auth)
    assert resp.status == 503 and "maximum of 2" in (await resp.json())["error"]
    client.app[STAGES].max_stages = 10
    await create(client, auth)
    resp = await client.post("/api/stages", json={}, headers=auth)
    assert resp.status == 503 and "full" in (await resp.json())["error"]
    assert len(client.app[STAGES].stages) == 3


async def test_session_delete_forgets_the_stage(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage = await create(client, auth)
    sid = stage["stage_id"]
    resp = await client.delete(f"/api/sessions/{sid}", headers=auth)
    assert resp.status == 200
    assert client.app[STAGES].get(sid) is None
    assert (await client.get(f"/api/stages/{sid}", headers=auth)).status == 404


async def watch(client: TestClient, sid: str, key: str | None, variant: str | None = None) -> tuple[RtcCustomer, dict[str, Any]]:  # type: ignore[type-arg]
    viewer = RtcCustomer()
    body: dict[str, Any] = await viewer.offer()
    if variant:
        body["variant"] = variant
    path = f"/api/stages/{sid}/offer" + (f"?key={key}" if key else "")
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    answer = dict(await resp.json())
    await viewer.accept(answer)
    return viewer, answer


async def test_viewers_share_one_encode_and_get_captions(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage = await create(client, auth, driver="script")
    sid, key = stage["stage_id"], stage["view_key"]
    viewers: list[RtcCustomer] = []
    try:
        for _ in range(3):
            viewer, answer = await watch(client, sid, key)
            viewers.append(viewer)
            assert answer["stage_id"] == sid and answer["variant"] == "main"
        overlay, _ = await watch(client, sid, key, variant="overlay")
        viewers.append(overlay)
        for viewer in viewers:
            await asyncio.wait_for(viewer.channel_open.wait(), 10)
        listed = await (await client.get(f"/api/stages/{sid}", headers=auth)).json()
        assert listed["viewers"] == 4

        resp = await client.post(f"/api/sessions/{sid}/say", json={"text": "Good evening and welcome."}, headers=auth)
        assert resp.status == 200
        for viewer in viewers:
            caption = await viewer.wait_for_event(lambda e: e["type"] == "caption")
            assert caption["text"].startswith("Good evening") and caption["speaker"] == "avatar"
        await wait_until(lambda: all(v.got.audio_rms and max(v.got.audio_rms) > 300 for v in viewers), within=15)
        await wait_until(lambda: all(len(v.got.video_pts) > 10 for v in viewers), within=15)
        for viewer in viewers[:3]:
            assert viewer.got.video_size == (512, 512)
        assert overlay.got.video_size == (512, 1024 + OVERLAY_GAP)  # colour over alpha

        # One render and one encode per frame however many watch (the frame being encoded at
        # this instant may be counted as read and not yet as encoded).
        stats = (await (await client.get(f"/api/stages/{sid}", headers=auth)).json())["feeds"]
        main = stats["main"]
        assert main["subscribers"] == 3 and list(main["encoders"]) == ["VP8"]
        assert main["frames_read"] > 10 and 0 <= main["frames_read"] - main["encoders"]["VP8"]["frames_encoded"] <= 1
        assert stats["overlay"]["subscribers"] == 1
        audio = stats["audio"]
        assert audio["frames_read"] > 10 and 0 <= audio["frames_read"] - audio["encoders"]["opus"]["frames_encoded"] <= 1
        # Main-variant viewers received the same frames (pts from the one stage clock).
        common = set(viewers[0].got.video_pts) & set(viewers[1].got.video_pts) & set(viewers[2].got.video_pts)
        assert len(common) > 5
    finally:
        for viewer in viewers:
            await viewer.close()
    await wait_until(lambda: client.app[STAGES].get(sid).media.viewer_count() == 0)  # type: ignore[union-attr]


async def test_viewer_offer_auth_and_bad_input(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    stage = await create(client, auth)
    sid, key = stage["stage_id"], stage["view_key"]
    probe = RtcCustomer()
    try:
        body = await probe.offer()
        # The stage id alone, a wrong key, a key of another stage, a bearer that is not a token.
        other = await create(client, auth)
        for path, headers in (
            (f"/api/stages/{sid}/offer", {}),
            (f"/api/stages/{sid}/offer?key=wrong", {}),
            (f"/api/stages/{sid}/offer?key={other['view_key']}", {}),
            (f"/api/stages/{sid}/offer", {"Authorization": f"Bearer {key}"}),
            ("/api/stages/nosuchstage/offer", {}),
            (f"/api/stages/nosuchstage/offer?key={key}", {}),
        ):
            resp = await client.post(path, json=body, headers=headers)
            assert resp.status == 401, (path, await resp.text())
            assert "error" in await resp.json()
        resp = await client.post(f"/api/stages/{sid}/offer", json={**body, "key": "wrong"})
        assert resp.status == 401
        # With the API token, an unknown stage is a 404.
        resp = await client.post("/api/stages/nosuchstage/offer", json=body, headers=auth)
        assert resp.status == 404 and "error" in await resp.json()
        for bad in (
            {**body, "type": "answer"},
            {**body, "sdp": "hello"},
            {"type": "offer"},
            {**body, "variant": "green"},
            {**body, "variant": 1},
            {**body, "sdp": "v=0\r\nnonsense"},
        ):
            resp = await client.post(f"/api/stages/{sid}/offer?key={key}", json=bad)
            assert resp.status == 400, (bad, await resp.text())
            assert "error" in await resp.json()
        resp = await client.post(f"/api/stages/{sid}/offer?key={key}", data=b"{oops")
        assert resp.status == 400
        # The viewer limit.
        client.app[STAGES].max_viewers = 0
        resp = await client.post(f"/api/stages/{sid}/offer", json={**body, "key": key})
        assert resp.status == 503 and "maximum of 0 viewers" in (await resp.json())["error"]
        client.app[STAGES].max_viewers = 5
        # The key in the body and the API token both admit a viewer.
        resp = await client.post(f"/api/stages/{sid}/offer", json={**body, "key": key})
        assert resp.status == 200, await resp.text()
        second = RtcCustomer()
        try:
            resp = await client.post(f"/api/stages/{sid}/offer", json=await second.offer(), headers=auth)
            assert resp.status == 200, await resp.text()
        finally:
            await second.close()
    finally:
        await probe.close()
    # Deleting the stage disconnects its viewers.
    fanout = client.app[STAGES].get(sid).media  # type: ignore[union-attr]
    assert fanout is not None and fanout.viewer_count() >= 1
    assert (await client.delete(f"/api/stages/{sid}", headers=auth)).status == 200
    assert fanout.viewer_count() == 0 and fanout.closed


async def restart(client: TestClient, aiohttp_client: Any, engines: Engines, data_dir: Path, **settings: Any) -> TestClient:  # type: ignore[type-arg]
    """Stop ``client``'s server (a graceful shutdown, as on SIGTERM) and start a new app on the
    same data dir."""
    from avatar.server.app import create_app

    await client.close()
    app = create_app(make_settings(data_dir, **{"max_sessions": 3, **settings}), engines=engines)
    return await aiohttp_client(app)  # type: ignore[no-any-return]


async def test_stages_survive_a_restart(
    client: TestClient, auth: dict[str, str], aiohttp_client: Any, engines: Engines, tmp_path: Path,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    on_air = await create(client, auth, avatar="leo", driver="script")
    brain = await create(client, auth)
    deleted = await create(client, auth, driver="operator")
    assert (await client.delete(f"/api/stages/{deleted['stage_id']}", headers=auth)).status == 200
    ended_by_session_api = await create(client, auth, driver="operator")
    resp = await client.delete(f"/api/sessions/{ended_by_session_api['stage_id']}", headers=auth)
    assert resp.status == 200
    # A stage whose avatar was removed from the avatars folder while the server was down.
    with Store.in_data_dir(tmp_path) as store:
        store.add_stage(StageRow("gonestage1", "nobody", "script", "k" * 32, time.time())).result()

    with caplog.at_level(logging.INFO, logger="avatar.broadcast.stages"):
        client = await restart(client, aiohttp_client, engines, tmp_path)
    assert "gonestage1 not brought back: its avatar 'nobody' no longer exists" in caplog.text
    assert on_air["stage_id"] in caplog.text and "back after the restart" in caplog.text

    listed = {s["stage_id"]: s for s in (await (await client.get("/api/stages", headers=auth)).json())["stages"]}
    assert set(listed) == {on_air["stage_id"], brain["stage_id"]}
    for before in (on_air, brain):
        after = listed[before["stage_id"]]
        for name in ("view_key", "avatar", "driver", "created", "overlay_url", "watch_url"):
            assert after[name] == before[name], name
    back = client.app[SESSIONS].get(on_air["stage_id"])
    assert back is not None and back.mode == "broadcast" and back.driver.name == "script"
    # The operator desk lists it like any stage.
    desk = await (await client.get("/api/operator/sessions", headers=await sign_in(client, "olga"))).json()
    assert on_air["stage_id"] in [s["session_id"] for s in desk["sessions"]]

    # The overlay's old URL works again: its view key is answered, and the stage speaks to it.
    viewer, answer = await watch(client, on_air["stage_id"], on_air["view_key"])
    try:
        assert answer["stage_id"] == on_air["stage_id"]
        await asyncio.wait_for(viewer.channel_open.wait(), 10)
        resp = await client.post(f"/api/sessions/{on_air['stage_id']}/say", json={"text": "We are back."}, headers=auth)
        assert resp.status == 200
        caption = await viewer.wait_for_event(lambda e: e["type"] == "caption")
        assert caption["text"].startswith("We are back")
        await wait_until(lambda: len(viewer.got.video_pts) > 5, within=15)
    finally:
        await viewer.close()

    # Deleted now, it does not come back on the next start; the unknown-avatar row stays stored.
    assert (await client.delete(f"/api/stages/{on_air['stage_id']}", headers=auth)).status == 200
    client = await restart(client, aiohttp_client, engines, tmp_path)
    listed = {s["stage_id"] for s in (await (await client.get("/api/stages", headers=auth)).json())["stages"]}
    assert listed == {brain["stage_id"]}
    # The stored stage that cannot come back is ended through the API, so it stops being retried.
    resp = await client.delete("/api/stages/gonestage1", headers=auth)
    assert resp.status == 200 and (await resp.json()) == {"status": "ended", "stage_id": "gonestage1", "on_air": False}
    assert (await client.delete("/api/stages/gonestage1", headers=auth)).status == 404
    await client.close()
    with Store.in_data_dir(tmp_path) as store:
        assert [row.id for row in store.live_stages()] == [brain["stage_id"]]
        assert store.stage(deleted["stage_id"]).ended is not None  # type: ignore[union-attr]


async def test_restored_stages_respect_the_limits(
    client: TestClient, auth: dict[str, str], aiohttp_client: Any, engines: Engines, tmp_path: Path,  # type: ignore[type-arg]
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await create(client, auth, driver="script")
    second = await create(client, auth, driver="script")
    with caplog.at_level(logging.WARNING, logger="avatar.broadcast.stages"):
        client = await restart(client, aiohttp_client, engines, tmp_path, max_sessions=1)
    assert f"{second['stage_id']} not brought back: the server is full" in caplog.text
    listed = [s["stage_id"] for s in (await (await client.get("/api/stages", headers=auth)).json())["stages"]]
    assert listed == [first["stage_id"]]  # the oldest first
    resp = await client.post("/api/stages", json={}, headers=auth)
    assert resp.status == 503
    # The one left out stays stored: a start with room brings it back.
    client = await restart(client, aiohttp_client, engines, tmp_path)
    listed = [s["stage_id"] for s in (await (await client.get("/api/stages", headers=auth)).json())["stages"]]
    assert sorted(listed) == sorted([first["stage_id"], second["stage_id"]])


async def test_a_stage_that_cannot_be_stored_is_not_made(client: TestClient, auth: dict[str, str]) -> None:  # type: ignore[type-arg]
    kept = await create(client, auth, driver="script")
    # The store is gone (a full disk, a broken file): the stage would not survive a restart, so it
    # is refused with a clear 503 and nothing is left running; the live stage stays on air.
    client.app[OPERATORS].store.close()
    resp = await client.post("/api/stages", json={"driver": "script"}, headers=auth)
    assert resp.status == 503 and "could not be stored" in (await resp.json())["error"]
    assert list(client.app[STAGES].stages) == [kept["stage_id"]]
    assert list(client.app[SESSIONS].sessions) == [kept["stage_id"]]
    resp = await client.delete(f"/api/stages/{kept['stage_id']}", headers=auth)
    assert resp.status == 503 and "may come back after a restart" in (await resp.json())["error"]
    assert client.app[STAGES].get(kept["stage_id"]) is None  # closed all the same
