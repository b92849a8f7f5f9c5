"""drop ix_items_job_status: counts come from job_counts, and every status change (claim,
release, result write) and every submitted item paid for this index

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_items_job_status", table_name="items")


def downgrade() -> None:
    op.create_index("ix_items_job_status", "items", ["job_id", "status"])
