"""ix_items_content_key only over items that have a content key (documents): a job of
prompts writes nothing to it at submit, and PostgreSQL's status updates skip it

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

SET = sa.text("content_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_items_content_key", table_name="items")
    op.create_index("ix_items_content_key", "items", ["content_key"], sqlite_where=SET,
                    postgresql_where=SET)


def downgrade() -> None:
    op.drop_index("ix_items_content_key", table_name="items")
    op.create_index("ix_items_content_key", "items", ["content_key"])
