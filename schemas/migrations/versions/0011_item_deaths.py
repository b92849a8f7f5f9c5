"""items.tries is items.deaths: it counts the worker deaths an item was in flight for
(poison items, worker.chunks), not its answers, which are the attempts table's rows.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A rename in place (SQLite 3.25+ too): no table is rebuilt, so the counting
    # triggers on items stay (schemas.db.counters).
    op.alter_column("items", "tries", new_column_name="deaths")


def downgrade() -> None:
    op.alter_column("items", "deaths", new_column_name="tries")
