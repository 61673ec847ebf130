"""The pages work under the server's real content security policy (the other browser tests bypass
it, because Playwright's string predicates need eval): Chromium reports no violation while the
customer's call connects and plays, while the other pages load, and while a page opens the
operator WebSocket; a foreign origin's WebSocket is refused."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.conftest import ServerProcess

pytestmark = pytest.mark.e2e

#: Collects CSP violations from the very start of each document (an init script is not page code).
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
"""


def poll(page: Any, expression: str, within: float = 20.0) -> Any:
    """Evaluate ``expression`` until it is truthy (``page.evaluate`` is not subject to the CSP,
    unlike ``wait_for_function``'s string predicates)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        page.wait_for_timeout(100)
    raise AssertionError(f"{expression} did not hold within {within} s")


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page()  # no bypass_csp: the real policy applies
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.add_init_script(WATCH_VIOLATIONS)
    response = page.goto(url)
    assert response is not None and "default-src 'self'" in response.headers["content-security-policy"]
    return page, problems


def test_the_call_works_under_the_csp(server: ServerProcess, browser: Any) -> None:
    page, problems = open_page(browser, server.url + "/")
    try:
        poll(page, "document.querySelectorAll('#avatar-select option').length >= 2")
        page.click("#start")
        poll(page, "window.avatarClient.connected === true")
        poll(page, "document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames > 10")
        page.fill("#text", "Hello there")
        page.click("#send")
        poll(page, "window.avatarClient.captions.length > 0")
        assert page.evaluate("window.__cspViolations") == []
        assert problems == []
    finally:
        page.close()


@pytest.mark.parametrize("path", ["/operator.html", "/mirror.html", "/watch.html", "/overlay.html"])
def test_other_pages_load_under_the_csp(server: ServerProcess, browser: Any, path: str) -> None:
    page, problems = open_page(browser, server.url + path)
    try:
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__cspViolations") == []
        assert [p for p in problems if "Content Security Policy" in p] == []
    finally:
        page.close()


OPEN_SOCKET = """(url) => new Promise((resolve) => {
  const ws = new WebSocket(url);
  ws.onopen = () => { ws.close(); resolve('open'); };
  ws.onerror = () => resolve('error');
})"""


def test_the_operator_websocket_is_allowed_from_its_own_page_only(server: ServerProcess, browser: Any) -> None:
    page, problems = open_page(browser, server.url + "/operator.html")
    try:
        ws_url = server.url.replace("http://", "ws://") + "/api/operator/ws"
        assert page.evaluate(OPEN_SOCKET, ws_url) == "open"
        assert page.evaluate("window.__cspViolations") == []
        assert [p for p in problems if "Content Security Policy" in p] == []
    finally:
        page.close()
    # A page of another origin (another port is another origin) is refused by the server.
    other = browser.new_page()
    try:
        other.goto("about:blank")
        other.set_content("<p>another site</p>")
        assert other.evaluate(OPEN_SOCKET, ws_url) in ("error",)
    finally:
        other.close()
