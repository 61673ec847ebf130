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


def wait_for_brain(server: ServerProcess, within: float = 180.0) -> None:
    """Wait until the server's brain has learnt its knowledge base (it does so in the background)."""
    import json

    deadline = time.monotonic() + within
    state = "unknown"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(server.url + "/healthz", timeout=5) as resp:
            state = json.load(resp)["brain"]
        if state not in ("loading", "ready"):
            raise RuntimeError(f"the brain is {state}:\n{server.log.read_text()}")
        if state == "ready":
            return
        time.sleep(0.5)
    raise RuntimeError(f"the brain did not become ready in {within:.0f} s")


#: A bank-sized knowledge base for browser tests that need the real brain: the English YAML
#: alone (77 topics, a few questions each) learns in seconds, unlike the whole shipped one.
SMALL_KB = Path(__file__).resolve().parents[2] / "assets" / "knowledge" / "en" / "banking77.yaml"


def kb_answer(topic: str, kb: Path = SMALL_KB) -> str:
    import yaml

    doc = yaml.safe_load(kb.read_text(encoding="utf-8"))
    for product in doc["products"]:
        for scenario in product["scenarios"]:
            for entry in scenario["entries"]:
                if entry["id"] == topic:
                    return str(entry["answer"])
    raise KeyError(topic)
