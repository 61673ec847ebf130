"""Real-browser fixtures: the real server in its own process, and Debian's Chromium driven by
Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("AVATAR_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("AVATAR_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    url: str
    token: str
    data_dir: Path
    proc: subprocess.Popen[bytes]
    log: Path


def start_server(tmp: Path, env_extra: dict[str, str] | None = None, token: str = "e2e-token") -> ServerProcess:
    port = free_port()
    data_dir = tmp / "data"
    log = tmp / "server.log"
    env = {
        **os.environ,
        "AVATAR_PORT": str(port),
        "AVATAR_HOST": "127.0.0.1",
        "AVATAR_DATA_DIR": str(data_dir),
        "AVATAR_API_TOKEN": token,
        "HF_HUB_OFFLINE": "1",
        "AVATAR_DRIVER": "echo",
        **(env_extra or {}),
    }
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "avatar", "serve"], env=env, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return ServerProcess(url, token, data_dir, proc, log)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not answer /healthz:\n{log.read_text()}")


def stop_server(server: ServerProcess) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium for one test module. Playwright's sync API runs its own event loop while open,
    so it must be closed before any asyncio test runs (hence module scope, and e2e tests last)."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"Chromium not found at {CHROMIUM}: run scripts/setup.sh --dev (installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
