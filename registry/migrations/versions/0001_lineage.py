"""Baseline: the ``lineage`` table, exactly as the old ``create_all`` made it.

Revision ID: 0001_lineage
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_lineage"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lineage",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("spec_name", sa.String(100), nullable=False),
        sa.Column("run_id", sa.String(250), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("name", sa.String(250), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("run_id", "kind", "name", name="uq_lineage_run_kind_name"),
    )
    op.create_index("ix_lineage_spec_name", "lineage", ["spec_name"])
    op.create_index("ix_lineage_run_id", "lineage", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_lineage_run_id", table_name="lineage")
    op.drop_index("ix_lineage_spec_name", table_name="lineage")
    op.drop_table("lineage")
