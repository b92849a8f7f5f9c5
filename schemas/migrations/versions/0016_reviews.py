"""reviews: a person's verdict on an item's answer (accepted, rejected or corrected, with
the correction and a note), one per item, by the name of the key that gave it.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("job_id", sa.String(32), primary_key=True),
        sa.Column("item_seq", sa.Integer(), primary_key=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("correction", sa.Text()),
        sa.Column("note", sa.Text()),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reviews")
