"""`moderation console`: serve the review console; `moderation console user ...`: its accounts."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from consumers.errors import CommandError, ExitCode
from consumers.settings import Settings

ROLES = ("reviewer", "lead", "admin")


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from consumers.signals import install_stop_signals

    stop = threading.Event()
    install_stop_signals(stop)
    changes = {name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None}
    if changes:
        settings = settings.model_copy(update={"console": settings.console.model_copy(update=changes)})
    from consumers.console.server import serve

    serve(settings, stop)
    return ExitCode.OK


@contextmanager
def _accounts(settings: Settings) -> Iterator[Any]:
    from moderation.storage import open_engine
    from moderation.storage.accounts import Accounts

    with open_engine(settings.database_url, require_schema=True) as engine:
        yield Accounts(engine)


def _who() -> str:
    """Who ran the command, for the audit log."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def _password(args: argparse.Namespace) -> str | None:
    if getattr(args, "proxy_only", False):
        return None
    if args.password_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CommandError.user("give the password on stdin with --password-stdin, or run in a terminal")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise CommandError.user("the two passwords differ")
    return first


def cmd_user(args: argparse.Namespace, settings: Settings) -> int:
    from moderation.review.values import Role
    from moderation.storage.accounts import AccountError

    by = _who()
    try:
        with _accounts(settings) as accounts:
            if args.user_command == "add":
                account = accounts.add(args.name, _password(args), Role(args.role), by=by)
                kind = "trusted-proxy login only" if not account.has_password else "password login"
                print(f"added {account.username} ({account.role.value}, {kind})")
            elif args.user_command == "disable":
                accounts.disable(args.name, by=by)
                print(f"disabled {args.name}; their sessions are over")
            elif args.user_command == "enable":
                accounts.enable(args.name, by=by)
                print(f"enabled {args.name}")
            elif args.user_command == "role":
                accounts.set_role(args.name, Role(args.role), by=by)
                print(f"{args.name} is now {args.role}")
            elif args.user_command == "password":
                accounts.set_password(args.name, _password(args) or "", by=by)
                print(f"password of {args.name} changed; their sessions are over")
            else:  # list
                for account in accounts.all():
                    state = "disabled" if account.disabled else "enabled"
                    login = "password" if account.has_password else "proxy"
                    print(f"{account.username}\t{account.role.value}\t{state}\t{login}")
    except AccountError as exc:
        raise CommandError.user(str(exc)) from exc
    return ExitCode.OK


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from moderation.storage import open_engine
    from moderation.storage.api_tokens import ApiTokens, Scope, TokenError

    by = _who()
    try:
        with open_engine(settings.database_url, require_schema=True) as engine:
            tokens = ApiTokens(engine)
            if args.action == "create":
                if args.expires_days is not None and args.expires_days <= 0:
                    raise CommandError.user(f"--expires-days must be positive, not {args.expires_days}")
                lifetime = timedelta(days=args.expires_days) if args.expires_days is not None else None
                secret, token = tokens.create(args.name, args.user, Scope(args.scope), by=by, expires_in=lifetime)
                # The secret on stdout alone (for a pipe into a secret store); what it is on stderr.
                until = token.expires_at.isoformat(timespec="seconds") if token.expires_at else "never"
                print(f"token {token.id} ({token.name}) for {token.username}, scope {token.scope.value}, "
                      f"expires {until}; shown once, store it now:", file=sys.stderr)
                print(secret)
            elif args.action == "revoke":
                token = tokens.revoke(args.id, by=by)
                print(f"revoked token {token.id} ({token.name}) of {token.username}")
            else:  # list
                for token in tokens.all():
                    state = "active" if token.active else ("revoked" if token.revoked_at else "expired")
                    used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never used"
                    print(f"{token.id}\t{token.name}\t{token.username}\t{token.scope.value}\t{token.prefix}...\t"
                          f"{state}\t{used}")
    except TokenError as exc:
        raise CommandError.user(str(exc)) from exc
    return ExitCode.OK


def register(commands: Any) -> None:
    console = commands.add_parser(
        "console", help="serve the review console (web), or manage its accounts",
        description="Serve the review console on MODERATION_CONSOLE__HOST:PORT (metrics and probes on "
        "MODERATION_CONSOLE__OPS_PORT), or manage its accounts with `moderation console user ...`.",
    )
    console.add_argument("--host", default=None, help="override MODERATION_CONSOLE__HOST")
    console.add_argument("--port", type=int, default=None, help="override MODERATION_CONSOLE__PORT")
    console.set_defaults(handler=cmd_serve)
    sub = console.add_subparsers(dest="console_command", metavar="SUBCOMMAND")
    user = sub.add_parser("user", help="console accounts: add, disable, enable, role, password, list")
    users = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = users.add_parser("add", help="add an account (password from a prompt or --password-stdin)")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, default="reviewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.add_argument("--proxy-only", action="store_true",
                     help="no password: the account logs in only through the trusted authenticating proxy")
    for name, helptext in (("disable", "disable an account and end its sessions"), ("enable", "enable it again")):
        action = users.add_parser(name, help=helptext)
        action.add_argument("name")
    role = users.add_parser("role", help="change an account's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    password = users.add_parser("password", help="set a new password (ends the account's sessions)")
    password.add_argument("name")
    password.add_argument("--password-stdin", action="store_true")
    users.add_parser("list", help="list the accounts")
    for parser in (user, *users.choices.values()):
        parser.set_defaults(handler=cmd_user)
    token = sub.add_parser("token", help="API tokens for service accounts: create, list, revoke")
    tokens = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = tokens.add_parser(
        "create", help="create a token acting as an account (printed once, on stdout)",
        description="Create an API token for the read API (/api/v1). It acts as ACCOUNT, with that account's "
        "role, within its scope: read (GET only) or write (also claims, decisions, appeals). Add a service "
        "account first: `moderation console user add NAME --proxy-only --role reviewer`.",
    )
    create.add_argument("name", help="what the token is for, e.g. 'grafana' or 'uploads takedown'")
    create.add_argument("--user", required=True, metavar="ACCOUNT", help="the console account it acts as")
    create.add_argument("--scope", choices=("read", "write"), default="read", help="default: read")
    create.add_argument("--expires-days", type=float, default=None, metavar="DAYS", help="default: never")
    tokens.add_parser("list", help="list the tokens (never their secrets)")
    revoke = tokens.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("id", type=int, help="the token's id, from `token list`")
    for parser in (token, *tokens.choices.values()):
        parser.set_defaults(handler=cmd_token)
