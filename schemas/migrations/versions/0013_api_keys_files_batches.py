"""api_keys, files and batches: what `nightshift serve` keeps of OpenAI's Batch API (keys
stored hashed, uploaded files' metadata, batches and the jobs they became)

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("revoked_at", STAMP),
    )
    op.create_table(
        "files",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(32)),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", STAMP, nullable=False),
    )
    op.create_index("ix_files_owner_created", "files", ["owner", "created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(32)),
        sa.Column("job_id", sa.String(32), unique=True),
        sa.Column("input_file_id", sa.String(40), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON()),
        sa.Column("errors", sa.JSON()),
        sa.Column("created_at", STAMP, nullable=False),
        sa.Column("failed_at", STAMP),
        sa.Column("cancelling_at", STAMP),
    )
    op.create_index("ix_batches_owner_created", "batches", ["owner", "created_at"])


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_table("files")
    op.drop_table("api_keys")
