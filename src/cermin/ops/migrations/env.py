"""Alembic environment of the state store (docs/agent.md "State store").

cermin runs it itself: `StateStore.open` hands over a connection in `config.attributes["connection"]`,
already inside the transaction that holds the migration lock, and every revision runs in it. A new
revision is written by hand beside 0001_initial.py; tests/test_state.py fails, naming the difference,
while the revisions and cermin/ops/stateschema.py disagree."""

from __future__ import annotations

from alembic import context

from cermin.ops.stateschema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("the state store's migrations run through cermin (StateStore.open), not the alembic command")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them: later revisions need batch mode
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
