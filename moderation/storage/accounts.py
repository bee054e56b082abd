"""Console accounts and login sessions: argon2 password hashes, server-side sessions, audited changes.

A session is a random token in an HttpOnly cookie; the table keeps only its sha256, so a copy of the
database does not let anyone log in. Disabling an account ends its sessions at once. Accounts without a
password hash exist for the trusted-proxy login (the proxy authenticates, the console authorises).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, insert, select, update

from moderation.review.values import Actor, Role
from moderation.storage.audit_log import record
from moderation.storage.errors import storage_errors
from moderation.storage.models import console_sessions_table, console_users_table

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
MIN_PASSWORD = 12
PREFERENCES = {"blur": (bool, True), "grayscale": (bool, False)}  # name -> (type, default)
_hasher = PasswordHasher()
# Verified when the account does not exist, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class AccountError(ValueError):
    """An account change refused: a bad name, a short password, an unknown account."""


@dataclass(frozen=True)
class Account:
    username: str
    role: Role
    disabled: bool
    has_password: bool
    preferences: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class Session:
    actor: Actor
    csrf_token: str
    expires_at: datetime
    preferences: dict[str, Any]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _account(row: Any) -> Account:
    return Account(row.username, Role(row.role), bool(row.disabled), row.password_hash is not None,
                   preferences_with_defaults(row.preferences), row.created_at)


def preferences_with_defaults(stored: Any) -> dict[str, Any]:
    values = {name: default for name, (_, default) in PREFERENCES.items()}
    for name, value in dict(stored or {}).items():
        if name in PREFERENCES and isinstance(value, PREFERENCES[name][0]):
            values[name] = value
    return values


class Accounts:
    """console_users and console_sessions over one Engine."""

    def __init__(self, engine: Engine, *, session_ttl: timedelta = timedelta(hours=12)) -> None:
        self._engine = engine
        self.session_ttl = session_ttl

    # -- accounts (the `moderation console user` commands) ---------------------------------------------

    def add(self, username: str, password: str | None, role: Role, *, by: str) -> Account:
        """A new account; `password` None for one that only logs in through the trusted proxy."""
        if not USERNAME.match(username):
            raise AccountError(
                f"{username!r} is not a valid user name (lower case letters, digits, . _ @ -; 64 at most)"
            )
        hashed = _hasher.hash(_checked_password(password)) if password is not None else None
        with storage_errors("could not add the account"), self._engine.begin() as conn:
            t = console_users_table
            if conn.execute(select(t.c.username).where(t.c.username == username)).first():
                raise AccountError(f"account {username!r} exists already")
            conn.execute(insert(console_users_table).values(
                username=username, password_hash=hashed, role=role.value, disabled=False, preferences={},
                created_at=datetime.now(timezone.utc),
            ))
            record(conn, by, "user_add", detail={"username": username, "role": role.value,
                                                  "password": password is not None})
        return self.get(username)  # type: ignore[return-value]

    def get(self, username: str) -> Account | None:
        with storage_errors("could not read accounts"), self._engine.connect() as conn:
            row = conn.execute(select(console_users_table).where(console_users_table.c.username == username)).first()
        return None if row is None else _account(row)

    def all(self) -> list[Account]:
        with storage_errors("could not read accounts"), self._engine.connect() as conn:
            rows = conn.execute(select(console_users_table).order_by(console_users_table.c.username))
            return [_account(r) for r in rows]

    def set_role(self, username: str, role: Role, *, by: str) -> None:
        self._change(username, {"role": role.value}, "user_role", {"role": role.value}, by)

    def disable(self, username: str, *, by: str) -> None:
        """Disable the account and end its sessions."""
        self._change(username, {"disabled": True}, "user_disable", {}, by, end_sessions=True)

    def enable(self, username: str, *, by: str) -> None:
        self._change(username, {"disabled": False}, "user_enable", {}, by)

    def set_password(self, username: str, password: str, *, by: str) -> None:
        """A new password; the account's sessions end (whoever knew the old one is logged out)."""
        hashed = _hasher.hash(_checked_password(password))
        self._change(username, {"password_hash": hashed}, "user_password", {}, by, end_sessions=True)

    def set_preferences(self, username: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Store the reviewer's display preferences (blur, grayscale); unknown names are ignored."""
        current = self.get(username)
        if current is None:
            raise AccountError(f"no account {username!r}")
        merged = preferences_with_defaults({**current.preferences, **changes})
        with storage_errors("could not save preferences"), self._engine.begin() as conn:
            conn.execute(update(console_users_table).where(console_users_table.c.username == username)
                         .values(preferences=merged))
        return merged

    def _change(
        self, username: str, values: dict[str, Any], action: str, detail: dict[str, Any], by: str,
        *, end_sessions: bool = False,
    ) -> None:
        t = console_users_table
        with storage_errors("could not change the account"), self._engine.begin() as conn:
            if conn.execute(update(t).where(t.c.username == username).values(**values)).rowcount != 1:
                raise AccountError(f"no account {username!r}")
            if end_sessions:
                conn.execute(delete(console_sessions_table).where(console_sessions_table.c.username == username))
            record(conn, by, action, detail={"username": username, **detail})

    # -- logging in ------------------------------------------------------------------------------------

    def authenticate(self, username: str, password: str) -> Actor | None:
        """The actor for a correct password of an enabled account, else None (same cost either way)."""
        account_row = None
        if USERNAME.match(username or ""):
            with storage_errors("could not read accounts"), self._engine.connect() as conn:
                account_row = conn.execute(
                    select(console_users_table).where(console_users_table.c.username == username)
                ).first()
        stored = account_row.password_hash if account_row is not None and account_row.password_hash else None
        try:
            _hasher.verify(stored or _DUMMY_HASH, password or "")
        except (VerificationError, InvalidHashError):
            return None
        if account_row is None or stored is None or account_row.disabled:
            return None
        if _hasher.check_needs_rehash(stored):
            with storage_errors("could not update the password hash"), self._engine.begin() as conn:
                conn.execute(update(console_users_table).where(console_users_table.c.username == username)
                             .values(password_hash=_hasher.hash(password)))
        return Actor(account_row.username, Role(account_row.role))

    def proxy_actor(self, username: str) -> Actor | None:
        """The actor a trusted proxy vouches for: an existing, enabled account (the console keeps roles)."""
        account = self.get(username) if USERNAME.match(username or "") else None
        if account is None or account.disabled:
            return None
        return Actor(account.username, account.role)

    def start_session(self, actor: Actor) -> tuple[str, Session]:
        """A new session for `actor`: the cookie's token (shown once, stored hashed) and the session."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        csrf = secrets.token_urlsafe(32)
        with storage_errors("could not start the session"), self._engine.begin() as conn:
            conn.execute(delete(console_sessions_table).where(console_sessions_table.c.expires_at < now))
            conn.execute(insert(console_sessions_table).values(
                token_sha256=_token_hash(token), username=actor.username, csrf_token=csrf, created_at=now,
                expires_at=now + self.session_ttl,
            ))
            record(conn, actor.username, "login", at=now)
        session = self.session(token)
        if session is None:
            raise AccountError(f"account {actor.username!r} cannot log in")
        return token, session

    def session(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, with its account's current role; None if it is over."""
        if not token or len(token) > 128:
            return None
        s, u = console_sessions_table, console_users_table
        now = datetime.now(timezone.utc)
        query = (
            select(s.c.csrf_token, s.c.expires_at, u.c.username, u.c.role, u.c.disabled, u.c.preferences)
            .select_from(s.join(u, u.c.username == s.c.username))
            .where(s.c.token_sha256 == _token_hash(token))
        )
        with storage_errors("could not read the session"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.disabled or row.expires_at <= now:
            return None
        return Session(Actor(row.username, Role(row.role)), row.csrf_token, row.expires_at,
                       preferences_with_defaults(row.preferences))

    def end_session(self, token: str) -> None:
        with storage_errors("could not end the session"), self._engine.begin() as conn:
            t = console_sessions_table
            conn.execute(delete(t).where(t.c.token_sha256 == _token_hash(token)))


def _checked_password(password: str | None) -> str:
    if password is None or len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise AccountError("a password of more than 1024 characters is not a password")
    return password
