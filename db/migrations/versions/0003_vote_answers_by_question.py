"""votes.answers: the answers of a vote keyed by question name, in place of one column per question

The strength, identity, texture and artifacts columns move into ``answers`` (JSON): a value per question, or
``{slot: value}`` for the per-person identity question; a column that is NULL gives no key. Downgrade moves
those four questions back into their columns; answers to questions declared later have no column to go to
and are dropped (logged).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 00:45:00
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

logger = logging.getLogger("db.migrations")

# The questions of revision 0002 with their columns' choices (frozen here: later declarations change nothing).
COLUMNS: dict[str, tuple[str, ...] | None] = {
    'strength': ('slight', 'clear'),
    'identity': None,  # JSON {slot: a|b|tie}
    'texture': ('a', 'b', 'tie'),
    'artifacts': ('a', 'b', 'tie'),
}
PAGE = 5000


def _column_type(name: str) -> sa.types.TypeEngine:
    """The column type of revision 0002 (a checked string for a choice), a new object on every call."""
    choices = COLUMNS[name]
    if choices is None:
        return sa.JSON()
    return sa.Enum(*choices, name=f'vote_{name}', native_enum=False, create_constraint=True, length=24)


def _votes(names: Sequence[str]) -> sa.TableClause:
    types = {'answers': sa.JSON(), 'identity': sa.JSON()}
    return sa.table('votes', sa.column('id', sa.Integer()), *(sa.column(n, types.get(n, sa.String())) for n in names))


def _move(read: Sequence[str], write: Sequence[str], convert) -> None:  # noqa: ANN001
    """Rewrite every vote in pages of ``PAGE``: ``convert(row)`` gives the new values of ``write``."""
    conn = op.get_bind()
    votes = _votes(list(dict.fromkeys([*read, *write])))
    last = 0
    while rows := conn.execute(sa.select(votes.c.id, *(votes.c[n] for n in read)).where(votes.c.id > last)
                               .order_by(votes.c.id).limit(PAGE)).all():
        last = rows[-1].id
        update = votes.update().where(votes.c.id == sa.bindparam('b_id')).values(
            {n: sa.bindparam(f'b_{n}') for n in write})
        conn.execute(update, [{'b_id': r.id, **{f'b_{n}': v for n, v in convert(r).items()}} for r in rows])


def upgrade() -> None:
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('answers', sa.JSON(), nullable=True))
    _move(list(COLUMNS), ['answers'],
          lambda r: {'answers': {n: getattr(r, n) for n in COLUMNS if getattr(r, n) is not None}})
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.alter_column('answers', existing_type=sa.JSON(), nullable=False)
        for name in ('vote_strength', 'vote_texture', 'vote_artifacts'):
            batch_op.drop_constraint(op.f(f'ck_votes_{name}'), type_='check')
        for name in COLUMNS:
            batch_op.drop_column(name)


def _columns_of(row) -> dict:  # noqa: ANN001
    answers = dict(row.answers or {})
    dropped = sorted(set(answers) - set(COLUMNS))
    if dropped:
        logger.warning("vote %d: answers to %s have no column before revision 0003 and are dropped",
                       row.id, ", ".join(dropped))
    return {n: answers.get(n) for n in COLUMNS}


def downgrade() -> None:
    with op.batch_alter_table('votes', schema=None) as batch_op:
        for name in COLUMNS:
            batch_op.add_column(sa.Column(name, _column_type(name), nullable=True))
    _move(['answers'], list(COLUMNS), _columns_of)
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.drop_column('answers')
