"""items.attempted: the attempts earlier runs of an item made (`nightshift retry` runs it
again in the same job), so that its new attempts are numbered after them in the ledger.

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

from schemas.db import counters

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A column added in place (SQLite too): no table is rebuilt, so the counting triggers
    # on items stay (schemas.db.counters).
    op.add_column("items", sa.Column("attempted", sa.Integer(), nullable=False,
                                     server_default="0"))


def downgrade() -> None:
    conn = op.get_bind()
    counters.drop(conn)  # SQLite rebuilds the table to drop a column, triggers and all
    with op.batch_alter_table("items") as batch:
        batch.drop_column("attempted")
    counters.reinstall(conn)
