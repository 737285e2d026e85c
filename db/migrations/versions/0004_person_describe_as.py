"""generation_subjects.describe_as: the word a visitor chose to describe a person (woman, man, girl, boy)

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-07 00:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('generation_subjects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('describe_as', sa.String(length=16), nullable=True))
        batch_op.create_check_constraint(
            op.f('ck_generation_subjects_describe_as_word'), "describe_as IN ('woman', 'man', 'girl', 'boy')"
        )


def downgrade() -> None:
    with op.batch_alter_table('generation_subjects', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_generation_subjects_describe_as_word'), type_='check')
        batch_op.drop_column('describe_as')
