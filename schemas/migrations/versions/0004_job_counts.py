"""job_counts: per-job counters kept by triggers (status of a million-item job in ms)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from schemas.db import counters

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("items", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("job_id", "status"),
    )
    conn = op.get_bind()
    counters.ensure(conn)
    counters.backfill(conn)


def downgrade() -> None:
    conn = op.get_bind()
    counters.drop(conn)
    if conn.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS items_counted()")
        op.execute("DROP FUNCTION IF EXISTS results_counted()")
    op.drop_table("job_counts")
