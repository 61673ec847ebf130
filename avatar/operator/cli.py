"""``avatar operator add|list|remove`` and ``avatar transcript export``.

Both work on the store under the data directory (``--data-dir``, ``AVATAR_DATA_DIR`` or the
configuration file), and may run while the server does (SQLite in WAL mode). Passwords are
read from standard input (one line; typed without echo on a terminal), never from a flag,
so they do not end up in the shell history or the process list.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import io
import json
import sys
from pathlib import Path
from typing import Any

EXPORT_FIELDS = ("session_id", "customer_id", "speaker", "text", "started", "ended", "interrupted")


def register(sub: Any) -> None:
    op: argparse.ArgumentParser = sub.add_parser("operator", help="manage operator accounts")
    op_sub = op.add_subparsers(dest="operator_command", metavar="ACTION")
    op_sub.required = True
    for name, help_text in (("add", "create an account (password from stdin)"), ("remove", "delete an account")):
        p = op_sub.add_parser(name, help=help_text)
        p.add_argument("name", help="the operator's sign-in name (shown as the speaker in transcripts)")
        _common(p)
        p.set_defaults(func=add if name == "add" else remove)
    p = op_sub.add_parser("list", help="list accounts")
    _common(p)
    p.set_defaults(func=list_accounts)

    tr: argparse.ArgumentParser = sub.add_parser("transcript", help="stored transcripts")
    tr_sub = tr.add_subparsers(dest="transcript_command", metavar="ACTION")
    tr_sub.required = True
    p = tr_sub.add_parser("export", help="write a session's transcript as JSON or CSV")
    p.add_argument("--session", required=True, help="the session id")
    p.add_argument("--format", choices=("json", "csv"), default="json")
    p.add_argument("--out", type=Path, help="file to write (default: standard output)")
    _common(p)
    p.set_defaults(func=export)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML configuration file (AVATAR_CONFIG)")
    p.add_argument("--data-dir", type=Path, help="where all state lives (default ./data; AVATAR_DATA_DIR)")


def _open_store(args: argparse.Namespace) -> Any:
    from avatar.cli import CliError
    from avatar.server.cli import settings_from_args
    from avatar.store import Store, StoreError

    settings = settings_from_args(args)
    try:
        return Store.in_data_dir(settings.data_dir)
    except StoreError as exc:
        raise CliError(str(exc)) from exc


def _read_password() -> str:
    from avatar.cli import CliError

    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise CliError("the passwords differ")
        return first
    line = sys.stdin.readline()
    if not line:
        raise CliError("no password on standard input")
    return line.rstrip("\r\n")


def add(args: argparse.Namespace) -> int:
    from avatar.cli import CliError
    from avatar.operator.accounts import AccountError, OperatorAccounts, check_name
    from avatar.store import DuplicateOperator

    try:
        check_name(args.name)
    except AccountError as exc:
        raise CliError(str(exc)) from exc
    password = _read_password()
    with _open_store(args) as store:
        try:
            OperatorAccounts(store).add(args.name, password)
        except (AccountError, DuplicateOperator) as exc:
            raise CliError(str(exc)) from exc
    print(f"operator {args.name} added")
    return 0


def remove(args: argparse.Namespace) -> int:
    from avatar.cli import CliError
    from avatar.operator.accounts import OperatorAccounts

    with _open_store(args) as store:
        if not OperatorAccounts(store).remove(args.name):
            raise CliError(f"no operator {args.name!r}")
    revoked = _revoke_sign_ins(args)
    print(f"operator {args.name} removed ({revoked} sign-in(s) revoked)")
    return 0


def _revoke_sign_ins(args: argparse.Namespace) -> int:
    """End the removed operator's sign-ins at once, on every server process."""
    from redis.exceptions import RedisError

    from avatar.cli import CliError
    from avatar.cluster.tokens import revoke_operator_everywhere
    from avatar.server.cli import settings_from_args

    settings = settings_from_args(args)
    try:
        return revoke_operator_everywhere(settings, args.name)
    except (RedisError, OSError) as exc:
        raise CliError(f"the account is removed, but its sign-ins could not be revoked in Redis: {exc}") from exc


def list_accounts(args: argparse.Namespace) -> int:
    import datetime as dt

    from avatar.operator.accounts import OperatorAccounts

    with _open_store(args) as store:
        records = OperatorAccounts(store).list()
    for r in records:
        created = dt.datetime.fromtimestamp(r.created).isoformat(timespec="seconds")
        print(f"{r.name}\t{created}")
    return 0


def export(args: argparse.Namespace) -> int:
    from avatar.cli import CliError

    with _open_store(args) as store:
        utterances = store.transcript(args.session)
        events = store.events(session_id=args.session)
    if not utterances and not events:
        raise CliError(f"no stored transcript for session {args.session!r}")
    if args.format == "json":
        text = json.dumps(
            {
                "session_id": args.session,
                "utterances": [u.to_dict() for u in utterances],
                "events": [e.to_dict() for e in events],
            },
            ensure_ascii=False,
            indent=2,
        ) + "\n"
    else:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        for u in utterances:
            row = u.to_dict()
            writer.writerow({k: row[k] for k in EXPORT_FIELDS})
        text = buf.getvalue()
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.out}: {exc.strerror}") from exc
    return 0
