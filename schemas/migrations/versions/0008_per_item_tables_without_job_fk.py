"""items, results, attempts and pieces without a foreign key to jobs: each of their rows
is written in a transaction that either creates its job (submit) or holds its job's row
lock (worker.chunks.write), so the key cannot dangle through nightshift; checking it
cost PostgreSQL a trigger per row, 3.6 s of a 1,000,000-item submit and 3 ms of a
1,000-result write. (job_counts never had one.) chunks keep theirs: a few per thousand
items.

On SQLite the four tables are rebuilt (Alembic batch mode; 2.2 s for a million items
here, once); schemas.db.upgrade puts the counting triggers back.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TABLES = ("items", "results", "attempts", "pieces")
# Names for SQLite's unnamed constraints (PostgreSQL named them <table>_job_id_fkey).
NAMING = {"fk": "%(table_name)s_%(column_0_name)s_fkey"}


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch:
            batch.drop_constraint(f"{table}_job_id_fkey", type_="foreignkey")


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, naming_convention=NAMING) as batch:
            batch.create_foreign_key(f"{table}_job_id_fkey", "jobs", ["job_id"], ["id"])

