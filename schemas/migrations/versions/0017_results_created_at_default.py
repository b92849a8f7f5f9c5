"""results.created_at defaults to the server's clock on PostgreSQL: a chunk's results are
written by COPY, which parsed the same timestamp sent with each of a thousand rows a
thousand times, where a column it leaves out is filled for far less.

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
    # The statement's time, as schemas.db.clock reads it, not the transaction's.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE results ALTER COLUMN created_at "
                   "SET DEFAULT statement_timestamp()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE results ALTER COLUMN created_at DROP DEFAULT")
