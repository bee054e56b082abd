"""Alembic environment: how a migration run gets its database and its target schema.

`moderation.storage.migrate` passes the URL in the Config (`sqlalchemy.url`); developers running
the alembic CLI from the repository set `MODERATION_DATABASE__URL` instead (alembic.ini has no URL,
so no credentials live in a file). The engine comes from `create_engine_for`, so migrations see the
same driver choice (psycopg 3) and SQLite settings as the service.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context

from moderation.storage.engine import create_engine_for, normalise_url
from moderation.storage.models import Base

URL_ENVIRONMENT_VARIABLE = "MODERATION_DATABASE__URL"

config = context.config
target_metadata = Base.metadata

# Only the CLI has an ini file with logging sections; programmatic runs leave the app's logging alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get(URL_ENVIRONMENT_VARIABLE)
    if not url:
        raise RuntimeError(
            f"no database URL: set {URL_ENVIRONMENT_VARIABLE} or use `moderation migrate` (which passes it)"
        )
    return url


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the DDL instead of running it, for a DBA to review."""
    url = normalise_url(database_url())
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine_for(database_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things; batch mode recreates the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        # Migrations run once at deploy time: do not leave pooled connections (or open SQLite files) behind.
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
