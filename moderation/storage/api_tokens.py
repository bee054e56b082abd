"""API tokens for service accounts: created once (the secret is shown then and never again), kept only as
a sha256, each acting as one console account with a scope, revocable at once, optionally expiring.

A token is only as strong as its account: a disabled account's tokens stop working, and a token's writes
are bounded by the account's role (a reviewer account's token cannot override). The scope narrows it
further: a `read` token never changes anything, whatever its account may do. Every creation and
revocation is in the audit log.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from sqlalchemy import Engine, insert, select, update

from moderation.review.values import Actor, Role
from moderation.storage.audit_log import record
from moderation.storage.errors import storage_errors
from moderation.storage.models import api_tokens_table, console_users_table

TOKEN_PREFIX = "mdt_"  # noqa: S105 - not a secret: recognisable in a leaked log or a secret scanner
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@:-]{0,63}$")
LAST_USED_EVERY = timedelta(minutes=1)  # `last_used_at` is written at most this often per token


class Scope(str, Enum):
    READ = "read"
    WRITE = "write"  # read and write


class TokenError(ValueError):
    """A token change refused: a bad name, an unknown account or token."""


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    username: str
    scope: Scope
    prefix: str
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        now = datetime.now(timezone.utc)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class TokenCaller:
    """Who a valid token speaks for."""

    actor: Actor
    scope: Scope
    token_id: int
    token_name: str


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _token(row: Any) -> ApiToken:
    return ApiToken(
        id=int(row.id), name=row.name, username=row.username, scope=Scope(row.scope), prefix=row.prefix,
        created_by=row.created_by, created_at=row.created_at, expires_at=row.expires_at,
        last_used_at=row.last_used_at, revoked_at=row.revoked_at,
    )


class ApiTokens:
    """The api_tokens table over one Engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def create(
        self, name: str, username: str, scope: Scope, *, by: str, expires_in: timedelta | None = None
    ) -> tuple[str, ApiToken]:
        """A new token for `username`'s account: its secret (shown once) and its record."""
        if not NAME.match(name):
            raise TokenError(f"{name!r} is not a valid token name (letters, digits, space . _ @ : -; 64 at most)")
        if expires_in is not None and expires_in <= timedelta(0):
            raise TokenError("a token's lifetime must be positive")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        t = api_tokens_table
        with storage_errors("could not create the token"), self._engine.begin() as conn:
            account = conn.execute(
                select(console_users_table.c.username).where(console_users_table.c.username == username)
            ).first()
            if account is None:
                raise TokenError(f"no account {username!r}: add it first with `moderation console user add`")
            token_id = conn.execute(insert(t).values(
                name=name, username=username, scope=scope.value, token_sha256=token_hash(secret),
                prefix=secret[: len(TOKEN_PREFIX) + 6], created_by=by, created_at=now,
                expires_at=now + expires_in if expires_in is not None else None,
            ).returning(t.c.id)).scalar_one()
            record(conn, by, "token_create", at=now, detail={
                "token_id": int(token_id), "name": name, "username": username, "scope": scope.value,
                "expires_at": (now + expires_in).isoformat() if expires_in is not None else None,
            })
        return secret, self.get(int(token_id))  # type: ignore[return-value]

    def get(self, token_id: int) -> ApiToken | None:
        t = api_tokens_table
        with storage_errors("could not read the tokens"), self._engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == token_id)).first()
        return None if row is None else _token(row)

    def all(self) -> list[ApiToken]:
        t = api_tokens_table
        with storage_errors("could not read the tokens"), self._engine.connect() as conn:
            return [_token(row) for row in conn.execute(select(t).order_by(t.c.id))]

    def revoke(self, token_id: int, *, by: str) -> ApiToken:
        """Revoke a token: it stops working with the next request."""
        t = api_tokens_table
        now = datetime.now(timezone.utc)
        with storage_errors("could not revoke the token"), self._engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.id == token_id)).first()
            if row is None:
                raise TokenError(f"no token {token_id}")
            if row.revoked_at is not None:
                raise TokenError(f"token {token_id} ({row.name}) was revoked already")
            conn.execute(update(t).where(t.c.id == token_id).values(revoked_at=now))
            record(conn, by, "token_revoke", at=now,
                   detail={"token_id": token_id, "name": row.name, "username": row.username})
        return self.get(token_id)  # type: ignore[return-value]

    def caller(self, secret: str | None) -> TokenCaller | None:
        """Who `secret` speaks for: a live, unrevoked token of an enabled account; else None."""
        if not secret or not secret.startswith(TOKEN_PREFIX) or len(secret) > 128:
            return None
        t, u = api_tokens_table, console_users_table
        now = datetime.now(timezone.utc)
        query = (
            select(t.c.id, t.c.name, t.c.scope, t.c.expires_at, t.c.revoked_at, t.c.last_used_at,
                   u.c.username, u.c.role, u.c.disabled)
            .select_from(t.join(u, u.c.username == t.c.username))
            .where(t.c.token_sha256 == token_hash(secret))
        )
        with storage_errors("could not read the tokens"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None or row.revoked_at is not None or row.disabled:
            return None
        if row.expires_at is not None and row.expires_at <= now:
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
            with storage_errors("could not record the token's use"), self._engine.begin() as conn:
                conn.execute(update(t).where(t.c.id == row.id).values(last_used_at=now))
        return TokenCaller(Actor(row.username, Role(row.role)), Scope(row.scope), int(row.id), row.name)
