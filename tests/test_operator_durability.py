"""The audit trail survives ``kill -9`` of the server: everything the server acknowledged
(sign-in, takeover, the transcript it served) is in the SQLite file afterwards. Also the
``avatar operator`` and ``avatar transcript export`` commands against the same file."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.e2e.conftest import start_server, stop_server
from tests.rtc_client import RtcCustomer

PASSWORD = "s3cret-enough"


def avatar_cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AVATAR_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "avatar", *args], input=stdin, capture_output=True, text=True, env=env, timeout=60
    )


async def test_audit_trail_survives_kill_9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    added = avatar_cli(data_dir, "operator", "add", "alice", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    server = start_server(tmp_path)
    customer = RtcCustomer()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            resp = await http.post("/api/offer", json=await customer.offer())
            answer = await resp.json()
            sid = answer["session_id"]
            await customer.accept(answer)
            await asyncio.wait_for(customer.channel_open.wait(), 20)

            login = await http.post("/api/operator/login", json={"name": "alice", "password": PASSWORD})
            assert login.status == 200
            alice = {"Authorization": f"Bearer {(await login.json())['token']}"}
            customer.send({"type": "text", "text": "My card is 4111 1111 1111 1111, please help"})
            await customer.wait_for_event(lambda e: e["type"] == "caption")
            assert (await http.post(f"/api/sessions/{sid}/takeover", headers=alice)).status == 200
            said = await http.post(f"/api/sessions/{sid}/say", json={"text": "Alice here, one moment."}, headers=alice)
            assert said.status == 200
            await customer.wait_for_event(lambda e: e["type"] == "caption" and e["text"].startswith("Alice"))

            async def served() -> list[dict[str, object]]:
                while True:
                    body = await (await http.get(f"/api/sessions/{sid}/transcript", headers=alice)).json()
                    if any(u["speaker"] == "alice" for u in body["utterances"]):
                        return list(body["utterances"])
                    await asyncio.sleep(0.1)

            acknowledged = await asyncio.wait_for(served(), 30)
    finally:
        await customer.close()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        stop_server(server)

    db = sqlite3.connect(data_dir / "store.sqlite3")
    rows = db.execute("SELECT speaker, text FROM utterances WHERE session_id = ? ORDER BY id", (sid,)).fetchall()
    kinds = [r[0] for r in db.execute("SELECT kind FROM events ORDER BY id")]
    db.close()
    assert [(u["speaker"], u["text"]) for u in acknowledged] == rows[: len(acknowledged)]
    assert rows[0][0] == "customer" and "4111" not in rows[0][1] and "please help" in rows[0][1]
    assert ("alice", "Alice here, one moment.") in rows
    assert kinds[:2] == ["login", "takeover"]

    exported = avatar_cli(data_dir, "transcript", "export", "--session", sid, "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    table = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [(r["speaker"], r["text"]) for r in table] == rows
    as_json = json.loads(avatar_cli(data_dir, "transcript", "export", "--session", sid).stdout)
    assert [e["kind"] for e in as_json["events"]] == ["takeover"]


def test_operator_commands(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert avatar_cli(data_dir, "operator", "add", "bob", stdin=PASSWORD + "\n").returncode == 0
    again = avatar_cli(data_dir, "operator", "add", "bob", stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    short = avatar_cli(data_dir, "operator", "add", "carol", stdin="short\n")
    assert short.returncode == 2 and "at least" in short.stderr
    reserved = avatar_cli(data_dir, "operator", "add", "ai", stdin=PASSWORD + "\n")
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
    db = sqlite3.connect(data_dir / "store.sqlite3")
    [(stored,)] = db.execute("SELECT password_hash FROM operators WHERE name = 'bob'").fetchall()
    db.close()
    assert stored.startswith("scrypt$") and PASSWORD not in stored
    listed = avatar_cli(data_dir, "operator", "list")
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["bob"]
    assert avatar_cli(data_dir, "operator", "remove", "bob").returncode == 0
    gone = avatar_cli(data_dir, "operator", "remove", "bob")
    assert gone.returncode == 2 and "no operator" in gone.stderr
    missing = avatar_cli(data_dir, "transcript", "export", "--session", "nope")
    assert missing.returncode == 2 and "no stored transcript" in missing.stderr
