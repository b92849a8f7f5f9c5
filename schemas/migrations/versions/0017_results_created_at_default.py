"""results.created_at defaults to the server's clock on PostgreSQL: a chunk's results
are written by COPY, and a column it leaves out costs the server nothing to fill, where
the same timestamp sent with each of a thousand rows was parsed a thousand times.

Revision ID: 0017
Revises: 0016
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite's writers keep giving the value (a default there means rebuilding the table).
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE results ALTER COLUMN created_at SET DEFAULT now()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE results ALTER COLUMN created_at DROP DEFAULT")
