"""Two real Chromium pages, a customer and an operator, against the real server process: the
operator signs in, sees the call, takes it over, types a line that the customer hears (a
caption with sound on the same connection, avatar and voice), hands back, and the AI answers
the next customer line; the stored transcript says who said what."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess
from tests.e2e.test_call_browser import AUDIO_ENERGY_JS

pytestmark = pytest.mark.e2e

PASSWORD = "desk-password-1"


def add_operator(server: ServerProcess, name: str) -> None:
    env = {**os.environ, "AVATAR_DATA_DIR": str(server.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "avatar", "operator", "add", name], input=PASSWORD + "\n", text=True,
        capture_output=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_operator_takes_over_a_live_call(server: ServerProcess, browser: Any, artifacts: Path) -> None:
    add_operator(server, "alice")  # the store is shared with the running server (WAL)
    customer = browser.new_page(viewport={"width": 420, "height": 860})
    operator = browser.new_page(viewport={"width": 1100, "height": 760})
    errors: list[str] = []
    for page in (customer, operator):
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        customer.goto(server.url + "/")
        customer.click("#start")
        customer.wait_for_function("window.avatarClient.connected === true", timeout=20_000)
        sid = customer.evaluate("window.avatarClient.sessionId")
        customer.fill("#text", "Hello there")
        customer.click("#send")
        customer.wait_for_function("window.avatarClient.captions.some(c => c.text.startsWith('Hello'))", timeout=20_000)
        first_caption = customer.evaluate("window.avatarClient.captions[0]")

        operator.goto(server.url + "/operator")
        operator.fill("#name", "alice")
        operator.fill("#password", PASSWORD)
        operator.click("#signin-button")
        operator.wait_for_function(f"window.operatorPanel.connected && !!window.operatorPanel.sessions['{sid}']")
        operator.click(f"li.card[data-session-id='{sid}']")
        operator.wait_for_selector("#transcript li.customer")
        operator.click("#takeover")
        operator.wait_for_function(f"window.operatorPanel.sessions['{sid}'].control === 'operator'")
        assert operator.evaluate(f"window.operatorPanel.sessions['{sid}'].holder") == "alice"

        before = customer.evaluate(AUDIO_ENERGY_JS)
        operator.fill("#say-text", "Hi, this is Alice from the bank. How can I help?")
        operator.click("#say-send")
        customer.wait_for_function(
            "window.avatarClient.captions.some(c => c.text.startsWith('Hi, this is Alice'))", timeout=20_000
        )
        customer.wait_for_timeout(1500)
        after = customer.evaluate(AUDIO_ENERGY_JS)
        assert after["energy"] > before["energy"] + 1e-4, (before, after)  # heard, not only captioned
        spoken = customer.evaluate("window.avatarClient.captions.find(c => c.text.startsWith('Hi, this is Alice'))")
        # Same call, same voice and language: nothing on the customer's side changed.
        assert customer.evaluate("window.avatarClient.sessionId") == sid
        assert spoken["lang"] == first_caption["lang"]
        assert not customer.evaluate("window.avatarClient.errors")
        operator.wait_for_selector("#transcript li.operator")
        operator.screenshot(path=str(artifacts / "operator-holding.png"))

        operator.click("#handback")
        operator.wait_for_function(f"window.operatorPanel.sessions['{sid}'].control === 'ai'")
        customer.fill("#text", "Thank you very much")
        customer.click("#send")
        customer.wait_for_function(
            "window.avatarClient.captions.some(c => c.text.startsWith('Thank you'))", timeout=20_000
        )
        operator.wait_for_function(
            "[...document.querySelectorAll('#transcript li.ai')].some(li => li.textContent.includes('Thank you'))",
            timeout=20_000,
        )

        req = urllib.request.Request(
            f"{server.url}/api/sessions/{sid}/transcript", headers={"Authorization": f"Bearer {server.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            stored = json.load(resp)
        who = [(u["speaker"], u["text"]) for u in stored["utterances"]]
        assert who[0] == ("customer", "Hello there")
        alice_line = ("alice", "Hi, this is Alice from the bank. How can I help?")
        assert alice_line in who
        assert who.index(alice_line) < who.index(("customer", "Thank you very much")) < who.index(("ai", "Thank you very much"))
        assert [e["kind"] for e in stored["events"]] == ["takeover", "handback"]
        assert not errors, errors
    finally:
        customer.close()
        operator.close()
