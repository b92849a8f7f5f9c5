"""attempts ledger, document pieces and content keys, results' quality columns, jobs'
schedule and priority

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempts",
        sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("item_seq", sa.Integer(), nullable=False),
        sa.Column("piece", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=32), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("sampling", sa.JSON(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("samples", sa.JSON(), nullable=True),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("next_reason", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "item_seq", "piece", "attempt"),
    )
    op.create_table(
        "pieces",
        sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("item_seq", sa.Integer(), nullable=False),
        sa.Column("piece", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("start_char", sa.Integer(), nullable=True),
        sa.Column("end_char", sa.Integer(), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("probabilities", sa.JSON(), nullable=True),
        sa.Column("quality", sa.String(length=16), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("finish_reason", sa.String(length=32), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "item_seq", "piece"),
    )
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("quality", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("checks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("pieces", sa.Integer(), nullable=True))
    with op.batch_alter_table("items") as batch:
        batch.add_column(sa.Column("content_key", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("same_as", sa.Integer(), nullable=True))
        batch.create_index("ix_items_content_key", ["content_key"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("start_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("deadline", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("enqueued", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("enqueued")
        batch.drop_column("priority")
        batch.drop_column("deadline")
        batch.drop_column("start_at")
    with op.batch_alter_table("items") as batch:
        batch.drop_index("ix_items_content_key")
        batch.drop_column("same_as")
        batch.drop_column("content_key")
    with op.batch_alter_table("results") as batch:
        for name in ("pieces", "metrics", "checks", "quality", "attempt"):
            batch.drop_column(name)
    op.drop_table("pieces")
    op.drop_table("attempts")
