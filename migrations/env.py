"""Alembic environment: our models' metadata, the URL set by cli.alembic_config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

import models

config = context.config
target_metadata = models.Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            compare_server_default=True,
        )
        with context.begin_transaction():
            # The role's timeouts (`flask db timeouts`) are for the app's statements; a
            # migration may rewrite a large table. lock_timeout stays: a migration waiting
            # for a lock must give up rather than block every query queued behind it.
            connection.exec_driver_sql(
                "SELECT set_config('statement_timeout', '0', true),"
                " set_config('idle_in_transaction_session_timeout', '0', true)"
            )
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
