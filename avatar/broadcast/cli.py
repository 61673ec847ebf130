"""``avatar broadcast --stage ID --rtmp URL``: push a running server's stage to an RTMP ingest.

The command talks to the server's API (``POST /api/stages/{id}/outputs``); the server does the
rendering and encoding. It finds the server at ``--server`` (else ``AVATAR_SERVER``, else
``http://<host>:<port>`` from the configuration: ``--config``/``AVATAR_CONFIG``, ``AVATAR_HOST``,
``AVATAR_PORT``; a wildcard host means this machine) and authenticates with the API token from
``--token`` (else ``AVATAR_API_TOKEN`` / ``api_token`` in the configuration, else the file
``<data_dir>/api_token`` the server wrote on its first start).

Without ``--detach`` it stays, printing the output's state as it changes, and removes the output
on Ctrl-C; with ``--detach`` it prints the output's id and leaves it running
(``avatar broadcast --stage ID --stop OUTPUT_ID`` removes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

FOLLOW_EVERY = 2.0
HTTP_TIMEOUT = 15.0


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "broadcast", help="push a broadcast stage of a running server to an RTMP URL",
        description="Push a running server's broadcast stage to an RTMP ingest (H.264 + AAC in FLV).",
    )
    p.add_argument("--stage", required=True, help="the stage id (from POST /api/stages)")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--rtmp", metavar="URL", help="rtmp://host[:port]/app/streamkey to push to")
    action.add_argument("--stop", metavar="OUTPUT_ID", help="remove an output made earlier with --detach")
    p.add_argument("--detach", action="store_true", help="leave the output running and exit at once")
    p.add_argument("--server", help="the server's base URL (default: AVATAR_SERVER, else host and port from the "
                                    "configuration)")
    p.add_argument("--token", help="the API token (default: AVATAR_API_TOKEN, api_token, else <data_dir>/api_token)")
    p.add_argument("--config", type=Path, help="TOML configuration file (AVATAR_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="the server's data directory (for its api_token file)")
    p.set_defaults(func=run)


class _Api:
    def __init__(self, base: str, token: str) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        from avatar.cli import CliError

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
                return dict(json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            raise CliError(f"the server refused ({exc.code}): {message}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"no server at {self.base} ({reason}); start one with 'avatar serve' or pass --server") from exc


def find_server(args: argparse.Namespace, settings: Any) -> str:
    if args.server:
        return str(args.server)
    if os.environ.get("AVATAR_SERVER"):
        return os.environ["AVATAR_SERVER"]
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def find_token(args: argparse.Namespace, settings: Any) -> str:
    from avatar.cli import CliError

    if args.token:
        return str(args.token)
    if settings.api_token:
        return str(settings.api_token)
    path = Path(settings.data_dir) / "api_token"
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise CliError(f"no API token: pass --token, set AVATAR_API_TOKEN, or point --data-dir at the server's data "
                       f"directory ({path}: {exc.strerror or exc})") from exc
    if not token:
        raise CliError(f"no API token: {path} is empty")
    return token


def run(args: argparse.Namespace) -> int:
    from avatar.broadcast.rtmp import BadOutputUrl, check_url
    from avatar.cli import CliError
    from avatar.server.cli import settings_from_args

    settings = settings_from_args(args)
    if args.rtmp is not None:
        try:
            url = check_url(args.rtmp)
        except BadOutputUrl as exc:
            raise CliError(str(exc).replace("'url'", "--rtmp")) from exc
    api = _Api(find_server(args, settings), find_token(args, settings))
    base = f"/api/stages/{quote(args.stage, safe='')}/outputs"
    if args.stop is not None:
        stopped = api.call("DELETE", f"{base}/{quote(args.stop, safe='')}")
        print(f"output {stopped.get('output_id')} stopped")
        return 0
    output = api.call("POST", base, {"url": url})
    output_id = str(output["output_id"])
    if args.detach:
        print(output_id)
        return 0
    print(f"output {output_id}: pushing stage {args.stage} to {output.get('url')} (Ctrl-C stops)", flush=True)
    last = None
    try:
        while True:
            outputs = api.call("GET", base).get("outputs", [])
            mine = next((o for o in outputs if o.get("output_id") == output_id), None)
            if mine is None:
                raise CliError("the output is gone (the stage ended, or someone removed it)")
            line = _describe(mine)
            if line != last:
                print(line, flush=True)
                last = line
            time.sleep(FOLLOW_EVERY)
    except KeyboardInterrupt:
        api.call("DELETE", f"{base}/{output_id}")
        print(f"output {output_id} stopped", file=sys.stderr)
        return 0


def _describe(output: dict[str, Any]) -> str:
    state = output.get("state")
    if state == "live":
        return f"live (attempt {output.get('attempts')})"
    if output.get("last_error"):
        return f"{state}: {output['last_error']} (retrying in {output.get('retry_in')} s)"
    return str(state)
