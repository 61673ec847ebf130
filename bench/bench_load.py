"""Load benchmark: open and close many sessions in a row and look for growth.

    .venv/bin/python bench/bench_load.py [--sessions 500] [--parallel 4] [--no-write]

A real server process (``avatar serve``, echo driver) and aiortc customers in this process
(null decoders: the customers count frames without decoding them). Each customer connects,
receives a few video frames, every third one types a line and hears the start of the answer,
then leaves: half of them close their peer connection (the server notices the connection
ending), half are ended with ``DELETE /api/sessions/{id}`` first (the API path). ``--parallel``
customers run at a time.

Before the run (after a warm-up of 20 sessions, so pools, caches and lazy imports exist), every
100 sessions, and after the last one has been gone for a few seconds, it reads from the server
process: resident memory (``/proc``), threads, open file descriptors, and asyncio tasks (from
``GET /metrics``, ``avatar_asyncio_tasks``). The target: nothing grows beyond noise once the
sessions are gone. Writes its section of ``BENCHMARKS.md`` between ``<!-- bench:load -->``
and ``<!-- /bench:load -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from bench._harness import (  # noqa: E402
    Customer,
    ServerProcess,
    asyncio_tasks,
    bounded,
    http_session,
    live_sessions,
    loopback_ice_only,
    machine_line,
    null_decoders,
    proc_status,
)
from bench._report import write_section  # noqa: E402


@dataclass
class Snapshot:
    after: int  # sessions opened and closed so far
    rss_mib: float
    threads: int
    fds: int
    tasks: int | None
    live: int  # sessions the server still counts


async def settle(http: aiohttp.ClientSession, server: ServerProcess, within: float = 60.0) -> int:
    """Wait until the server has no live session (peers closed by customers take a moment to be
    noticed), then a little longer for closing tasks to finish. Returns what is still live."""
    deadline = time.monotonic() + within
    live = await live_sessions(http, server)
    while live and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        live = await live_sessions(http, server)
    await asyncio.sleep(3.0)
    return live


async def snapshot(http: aiohttp.ClientSession, server: ServerProcess, after: int) -> Snapshot:
    live = await settle(http, server)
    rss, threads, fds = proc_status(server.pid)
    return Snapshot(after, rss, threads, fds, await asyncio_tasks(http, server), live)


async def one_session(http: aiohttp.ClientSession, server: ServerProcess, index: int) -> None:
    customer = Customer(codec="VP8")
    try:
        session_id = await customer.connect(http, server.url)
        for _ in range(400):  # a few frames (at most 20 s): the media path is up
            if customer.frames["video"] >= 5:
                break
            await asyncio.sleep(0.05)  # frames are counted by aiortc's receiver tasks
        if index % 3 == 0:
            since = time.monotonic()
            customer.send_text(f"Hello, this is customer number {index}.")
            await customer.wait_event(lambda e: e.get("type") == "caption", within=30.0, since=since)
        if index % 2 == 0:
            headers = {"Authorization": f"Bearer {server.token}"}
            async with http.delete(f"{server.url}/api/sessions/{session_id}", headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"DELETE failed ({resp.status}): {await resp.text()}")
    finally:
        await customer.close()


async def run(sessions: int, parallel: int, every: int = 100) -> tuple[list[Snapshot], dict[str, float]]:
    loopback_ice_only()
    snapshots: list[Snapshot] = []
    failures = 0
    with ServerProcess(max_sessions=max(64, parallel * 4)) as server, null_decoders():
        async with http_session() as http:
            for i in range(20):  # warm-up: pools, caches and lazy imports come into being
                await one_session(http, server, i)
            snapshots.append(await snapshot(http, server, 0))
            started = time.monotonic()
            done = 0
            while done < sessions:
                batch = min(parallel, sessions - done)
                results = await asyncio.gather(
                    *(bounded(one_session(http, server, done + k), 60.0, "a session") for k in range(batch)),
                    return_exceptions=True,
                )
                for result in results:
                    if isinstance(result, BaseException):
                        failures += 1
                        print(f"session failed: {result}", file=sys.stderr)
                done += batch
                if done % every == 0 or done == sessions:
                    snapshots.append(await snapshot(http, server, done))
                    s = snapshots[-1]
                    print(
                        f"{done:4d} sessions: RSS {s.rss_mib:.1f} MiB, {s.threads} threads, {s.fds} fds, "
                        f"{s.tasks} tasks, {s.live} live",
                        flush=True,
                    )
            elapsed = time.monotonic() - started
    return snapshots, {"elapsed": elapsed, "failures": failures}


def section(snapshots: list[Snapshot], extra: dict[str, float], sessions: int, parallel: int) -> str:
    first, last = snapshots[0], snapshots[-1]
    rows = "\n".join(
        f"| {s.after} | {s.rss_mib:.1f} | {s.threads} | {s.fds} | {s.tasks if s.tasks is not None else 'n/a'} "
        f"| {s.live} |"
        for s in snapshots
    )
    task_delta = "n/a" if first.tasks is None or last.tasks is None else f"{last.tasks - first.tasks:+d}"
    return f"""### Load: {sessions} sessions opened and closed in a row

Command: `.venv/bin/python bench/bench_load.py --sessions {sessions} --parallel {parallel}`
({machine_line()}; the machine is shared, so memory noise includes allocator reuse).

A real server process (echo driver); {parallel} aiortc customers at a time, each receiving a
few frames, every third typing a line and hearing the start of the answer; half leave by
closing their connection, half are ended through `DELETE /api/sessions/{{id}}`. Measured after a
warm-up of 20 sessions and whenever the server had no live session left.

| sessions so far | RSS (MiB) | threads | open fds | asyncio tasks | live sessions |
|---|---|---|---|---|---|
{rows}

Change from the first to the last row: RSS {last.rss_mib - first.rss_mib:+.1f} MiB, threads
{last.threads - first.threads:+d}, fds {last.fds - first.fds:+d}, asyncio tasks {task_delta}.
{int(extra["failures"])} of {sessions} sessions failed; the run took {extra["elapsed"]:.0f} s.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--every", type=int, default=100, help="measure after every N sessions")
    parser.add_argument("--no-write", action="store_true", help="print, do not update BENCHMARKS.md")
    args = parser.parse_args()
    if args.sessions < 1 or args.parallel < 1 or args.every < 1:
        print("bench_load: --sessions, --parallel and --every must be at least 1", file=sys.stderr)
        return 2
    snapshots, extra = asyncio.run(run(args.sessions, args.parallel, args.every))
    body = section(snapshots, extra, args.sessions, args.parallel)
    print(body)
    if not args.no_write:
        write_section("load", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
