"""items.writes: a result write counts the status changes it makes itself, and the
counting triggers stand down for it (schemas.db.counters). On SQLite, whose triggers fire
per row, that is two counter upserts an item: an eighth of a 1,000-result write.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from schemas.db import counters

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("writes", sa.Integer(), nullable=False,
                                     server_default="0"))
    counters.reinstall(op.get_bind())


def downgrade() -> None:
    conn = op.get_bind()
    counters.drop(conn)  # SQLite cannot drop a column that a trigger names
    with op.batch_alter_table("items") as batch:
        batch.drop_column("writes")
    counters.reinstall(conn)
