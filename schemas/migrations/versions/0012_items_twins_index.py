"""ix_items_twins: the items that take another item's answer (same_as), by job and by
the item they wait for, so that a result write finds its twins without walking the
job's items; only those rows are in it, so a job without duplicates adds nothing

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TWIN = sa.text("same_as IS NOT NULL")


def upgrade() -> None:
    op.create_index("ix_items_twins", "items", ["job_id", "same_as"], sqlite_where=TWIN,
                    postgresql_where=TWIN)


def downgrade() -> None:
    op.drop_index("ix_items_twins", table_name="items")
