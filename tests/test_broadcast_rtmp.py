"""RTMP out against a real RTMP server: Debian's nginx with its RTMP module, started by the test
as its own process on a free port with a temporary configuration. A stage is pushed through the
API and read back with PyAV: H.264 and AAC, 25 fps, and sound while the avatar speaks. Then
nginx is restarted mid-push and the output reconnects by itself."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient

from avatar.broadcast.rtmp import BadOutputUrl, check_url, redact_url
from avatar.broadcast.show_routes import SHOWS
from tests.test_operator_api import wait_until

NGINX = Path("/usr/sbin/nginx")
RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtmpServer:
    """nginx + RTMP as a child process of the test, everything under ``root``."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "nginx.conf"
        self.conf.write_text(
            f"load_module {RTMP_MODULE};\n"
            "daemon off;\nmaster_process off;\nworker_processes 1;\n"
            f"pid {root}/nginx.pid;\nerror_log {root}/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; }} }} }}\n"
        )

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(NGINX), "-p", str(self.root), "-c", str(self.conf), "-e", str(self.root / "error.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def url(self, key: str) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"


@pytest.fixture
def rtmp_server(tmp_path: Path) -> Iterator[RtmpServer]:
    if not NGINX.exists() or not RTMP_MODULE.exists():
        pytest.skip("needs Debian's nginx and libnginx-mod-rtmp (scripts/setup.sh --dev installs them)")
    server = RtmpServer(tmp_path / "nginx", free_port())
    server.start()
    yield server
    server.stop()


@dataclass
class Received:
    video_codec: str = ""
    audio_codec: str = ""
    average_rate: Any = None
    audio_rate: int = 0
    video_pts_ms: list[int] = field(default_factory=list)
    audio_rms: list[float] = field(default_factory=list)
    error: str | None = None


def read_stream(url: str, frames: int, got: Received) -> None:
    """Play the stream back with PyAV (as a viewer of the ingest would) until ``frames`` video frames."""
    import av

    try:
        with av.open(url, timeout=15) as container:
            video = container.streams.video[0]
            audio = container.streams.audio[0]
            got.video_codec, got.audio_codec = video.codec_context.name, audio.codec_context.name
            got.average_rate, got.audio_rate = video.average_rate, audio.codec_context.sample_rate
            for packet in container.demux(video, audio):
                if packet.stream.type == "video" and packet.pts is not None:
                    got.video_pts_ms.append(int(packet.pts * packet.time_base * 1000))
                for frame in packet.decode():
                    if isinstance(frame, av.AudioFrame):
                        samples = frame.to_ndarray().astype(np.float32)
                        if samples.dtype.kind == "f" and np.abs(samples).max() <= 1.0:
                            samples = samples * 32768.0
                        got.audio_rms.append(float(np.sqrt(np.mean(samples**2))))
                if len(got.video_pts_ms) >= frames:
                    return
    except Exception as exc:  # reported by the test's assertions
        got.error = f"{type(exc).__name__}: {exc}"


async def new_stage(client: TestClient, auth: dict[str, str]) -> str:  # type: ignore[type-arg]
    resp = await client.post("/api/stages", json={"driver": "operator"}, headers=auth)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["stage_id"])


async def output_state(client: TestClient, auth: dict[str, str], stage_id: str) -> dict[str, Any]:  # type: ignore[type-arg]
    outputs = (await (await client.get(f"/api/stages/{stage_id}/outputs", headers=auth)).json())["outputs"]
    assert len(outputs) == 1
    return dict(outputs[0])


async def wait_for_state(
    client: TestClient, auth: dict[str, str], stage_id: str, predicate: Any, within: float = 30.0  # type: ignore[type-arg]
) -> dict[str, Any]:
    for _ in range(int(within / 0.1)):
        state = await output_state(client, auth, stage_id)
        if predicate(state):
            return state
        await asyncio.sleep(0.1)
    raise AssertionError(f"output never reached the state; last: {state}")


def test_url_checks() -> None:
    assert check_url(" rtmp://live.example.com/app/key123 ") == "rtmp://live.example.com/app/key123"
    assert check_url("rtmps://a.example.com:443/live/abc") == "rtmps://a.example.com:443/live/abc"
    for bad in ("", "http://x/app/key", "rtmp://x/app", "rtmp:///app/key", "rtmp://x/app/k ey",
                "rtmp://x:99999/app/key", "rtmp://x:port/app/key"):
        with pytest.raises(BadOutputUrl):
            check_url(bad)
    # The stream key is a secret: status shows only its start.
    assert redact_url("rtmp://live.example.com:1935/app/sk_live_123456") == "rtmp://live.example.com:1935/app/sk_…"


async def test_push_to_real_rtmp_server(client: TestClient, auth: dict[str, str], rtmp_server: RtmpServer) -> None:  # type: ignore[type-arg]
    stage_id = await new_stage(client, auth)
    url = rtmp_server.url("show")
    resp = await client.post(f"/api/stages/{stage_id}/outputs", json={"url": url}, headers=auth)
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    assert created["url"] == redact_url(url) and "show" not in created["url"].rsplit("/", 1)[1][3:]
    assert (await client.post(f"/api/stages/{stage_id}/outputs", json={"url": url}, headers=auth)).status == 409
    await wait_for_state(client, auth, stage_id, lambda s: s["state"] == "live")

    got = Received()
    reader = threading.Thread(target=read_stream, args=(url, 125, got), daemon=True)
    reader.start()
    await asyncio.sleep(0.5)  # the reader has joined: the line is heard in what it reads
    said = await client.post(
        f"/api/sessions/{stage_id}/say",
        json={"text": "Good evening and welcome to our live show. Tonight we present our new travel card."},
        headers=auth,
    )
    assert said.status == 200, await said.text()
    await asyncio.to_thread(reader.join, 60)
    assert not reader.is_alive() and got.error is None, got.error

    assert got.video_codec == "h264" and got.audio_codec == "aac"
    assert got.average_rate == 25 and got.audio_rate == 48_000
    steps = np.diff(got.video_pts_ms)
    assert np.median(steps) == 40  # 25 fps on the stream's own clock
    assert max(got.audio_rms) > 300, "no sound while the avatar speaks"
    status = await output_state(client, auth, stage_id)
    assert status["frames_sent"] >= 125 and status["failures"] == 0

    resp = await client.delete(f"/api/stages/{stage_id}/outputs/{created['output_id']}", headers=auth)
    assert resp.status == 200 and (await resp.json())["state"] == "stopped"
    assert (await (await client.get(f"/api/stages/{stage_id}/outputs", headers=auth)).json())["outputs"] == []


async def test_reconnects_after_the_server_restarts(
    client: TestClient, auth: dict[str, str], rtmp_server: RtmpServer  # type: ignore[type-arg]
) -> None:
    stage_id = await new_stage(client, auth)
    url = rtmp_server.url("again")
    resp = await client.post(f"/api/stages/{stage_id}/outputs", json={"url": url}, headers=auth)
    assert resp.status == 201
    await wait_for_state(client, auth, stage_id, lambda s: s["state"] == "live")

    await asyncio.to_thread(rtmp_server.stop)
    failed = await wait_for_state(client, auth, stage_id, lambda s: s["failures"] >= 1)
    assert failed["state"] == "connecting" and failed["last_error"]
    await asyncio.to_thread(rtmp_server.start)
    back = await wait_for_state(client, auth, stage_id, lambda s: s["state"] == "live" and s["attempts"] >= 2, 60)
    assert back["last_error"] is None

    got = Received()
    await asyncio.to_thread(read_stream, url, 25, got)
    assert got.error is None and got.video_codec == "h264" and len(got.video_pts_ms) >= 25
    # Deleting the stage stops its outputs.
    assert (await client.delete(f"/api/stages/{stage_id}", headers=auth)).status == 200
    directory = client.app[SHOWS]
    await wait_until(lambda: stage_id not in directory.stages)


async def test_cli_pushes_through_a_running_server(
    client: TestClient, auth: dict[str, str], rtmp_server: RtmpServer, tmp_path: Path,  # type: ignore[type-arg]
    capsys: pytest.CaptureFixture[str],
) -> None:
    from avatar.cli import main
    from tests.conftest import API_TOKEN

    stage_id = await new_stage(client, auth)
    server = str(client.make_url("")).rstrip("/")
    url = rtmp_server.url("cli")
    # The token is found in <data_dir>/api_token when no flag or variable gives it.
    data_dir = tmp_path / "server-data"
    data_dir.mkdir()
    (data_dir / "api_token").write_text(API_TOKEN + "\n")
    argv = ["broadcast", "--stage", stage_id, "--rtmp", url, "--server", server, "--data-dir", str(data_dir), "--detach"]
    assert await asyncio.to_thread(main, argv) == 0
    output_id = capsys.readouterr().out.strip()
    state = await wait_for_state(client, auth, stage_id, lambda s: s["state"] == "live")
    assert state["output_id"] == output_id
    stop = ["broadcast", "--stage", stage_id, "--stop", output_id, "--server", server, "--token", API_TOKEN]
    assert await asyncio.to_thread(main, stop) == 0
    assert f"output {output_id} stopped" in capsys.readouterr().out
    assert (await (await client.get(f"/api/stages/{stage_id}/outputs", headers=auth)).json())["outputs"] == []

    # Mistakes: one line on stderr, exit code 2.
    for args, message in [
        (["--stage", stage_id, "--rtmp", "http://x/live/k", "--server", server, "--token", API_TOKEN], "--rtmp must"),
        (["--stage", "nope", "--rtmp", url, "--server", server, "--token", API_TOKEN], "(404): no live broadcast"),
        (["--stage", stage_id, "--rtmp", url, "--server", server, "--token", "wrong"], "(401)"),
        (["--stage", stage_id, "--rtmp", url, "--server", server, "--data-dir", str(tmp_path / "none")], "no API token"),
    ]:
        assert await asyncio.to_thread(main, ["broadcast", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
