"""batches.file_sizes: a batch's output and error files' sizes in bytes, as last counted,
with the reviews they were counted at: `files.retrieve` of a million-row output rendered
every line to count them, each time it was asked.

Revision ID: 0018
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("file_sizes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("file_sizes")
