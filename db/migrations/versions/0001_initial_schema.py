"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-27 10:44:46.417974
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('adapter_dir', sa.String(length=1024), nullable=True),
    sa.Column('base_model', sa.String(length=256), nullable=True),
    sa.Column('notes', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_versions')),
    sa.UniqueConstraint('name', name='model_version_name_uq')
    )
    op.create_table('reference_photos',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=1024), nullable=False),
    sa.Column('consent', sa.Boolean(), nullable=False),
    sa.Column('visitor_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reference_photos'))
    )
    with op.batch_alter_table('reference_photos', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reference_photos_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_reference_photos_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_reference_photos_visitor_id'), ['visitor_id'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.Enum('annotator', 'researcher', 'admin', name='user_role', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('username', name='user_username_uq')
    )
    op.create_table('exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('out_dir', sa.String(length=1024), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('num_rows', sa.Integer(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_exports_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exports'))
    )
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_exports_user_id'), ['user_id'], unique=False)

    op.create_table('generations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task', sa.Enum('fusion', 'age', name='generation_task', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('user_prompt', sa.Text(), nullable=False),
    sa.Column('final_prompt', sa.Text(), nullable=False),
    sa.Column('prompt_source', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('visitor_id', sa.String(length=64), nullable=True),
    sa.Column('subjects_key', sa.String(length=64), nullable=False),
    sa.Column('num_subjects', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('num_subjects BETWEEN 1 AND 6', name=op.f('ck_generations_num_subjects_range')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_generations_model_version_id_model_versions'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generations'))
    )
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generations_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_model_version_id'), ['model_version_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_subjects_key'), ['subjects_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_generations_visitor_id'), ['visitor_id'], unique=False)

    op.create_table('candidates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation_id', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('image_path', sa.String(length=1024), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('faces', sa.JSON(), nullable=True),
    sa.Column('face_matches', sa.JSON(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('in_pool', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['generation_id'], ['generations.id'], name=op.f('fk_candidates_generation_id_generations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_candidates')),
    sa.UniqueConstraint('generation_id', 'image_sha256', name='candidate_generation_image_uq')
    )
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_candidates_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_candidates_image_sha256'), ['image_sha256'], unique=False)

    op.create_table('generation_subjects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('generation_id', sa.Integer(), nullable=False),
    sa.Column('slot', sa.Integer(), nullable=False),
    sa.Column('reference_photo_id', sa.Integer(), nullable=True),
    sa.Column('target_age', sa.Float(), nullable=True),
    sa.Column('label', sa.String(length=128), nullable=True),
    sa.CheckConstraint('slot BETWEEN 0 AND 5', name=op.f('ck_generation_subjects_slot_range')),
    sa.ForeignKeyConstraint(['generation_id'], ['generations.id'], name=op.f('fk_generation_subjects_generation_id_generations'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['reference_photo_id'], ['reference_photos.id'], name=op.f('fk_generation_subjects_reference_photo_id_reference_photos'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generation_subjects')),
    sa.UniqueConstraint('generation_id', 'slot', name='generation_subject_slot_uq')
    )
    with op.batch_alter_table('generation_subjects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_generation_subjects_generation_id'), ['generation_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_generation_subjects_reference_photo_id'), ['reference_photo_id'], unique=False)

    op.create_table('badcases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('task', sa.Enum('fusion', 'age', name='badcase_task', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('failure_types', sa.JSON(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['candidates.id'], name=op.f('fk_badcases_candidate_id_candidates'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_badcases_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_badcases'))
    )
    with op.batch_alter_table('badcases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_badcases_candidate_id'), ['candidate_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_badcases_task'), ['task'], unique=False)
        batch_op.create_index(batch_op.f('ix_badcases_user_id'), ['user_id'], unique=False)

    op.create_table('comparisons',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('candidate_a_id', sa.Integer(), nullable=False),
    sa.Column('candidate_b_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('within_generation', 'cross_model', name='comparison_kind', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('is_gold', sa.Boolean(), nullable=False),
    sa.Column('gold_answer', sa.Enum('a', 'b', 'tie', 'both_bad', name='gold_answer', native_enum=False, create_constraint=True, length=24), nullable=True),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('vote_count', sa.Integer(), nullable=False),
    sa.Column('last_vote_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('NOT is_gold OR gold_answer IS NOT NULL', name=op.f('ck_comparisons_gold_has_answer')),
    sa.CheckConstraint('candidate_a_id < candidate_b_id', name=op.f('ck_comparisons_ordered_pair')),
    sa.CheckConstraint('vote_count >= 0', name=op.f('ck_comparisons_vote_count_nonnegative')),
    sa.ForeignKeyConstraint(['candidate_a_id'], ['candidates.id'], name=op.f('fk_comparisons_candidate_a_id_candidates'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['candidate_b_id'], ['candidates.id'], name=op.f('fk_comparisons_candidate_b_id_candidates'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_comparisons')),
    sa.UniqueConstraint('candidate_a_id', 'candidate_b_id', name='comparison_pair_uq')
    )
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_comparisons_candidate_a_id'), ['candidate_a_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_comparisons_candidate_b_id'), ['candidate_b_id'], unique=False)
        batch_op.create_index('ix_comparisons_sampling', ['is_gold', 'active', 'vote_count'], unique=False)

    op.create_table('assignments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('shown_left_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('open', 'voted', 'skipped', name='assignment_status', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], name=op.f('fk_assignments_comparison_id_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['shown_left_id'], ['candidates.id'], name=op.f('fk_assignments_shown_left_id_candidates'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_assignments_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_assignments')),
    sa.UniqueConstraint('comparison_id', 'user_id', name='assignment_comparison_user_uq')
    )
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assignments_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_index('ix_assignments_comparison_status', ['comparison_id', 'status'], unique=False)
        batch_op.create_index(batch_op.f('ix_assignments_shown_left_id'), ['shown_left_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_assignments_user_id'), ['user_id'], unique=False)
        batch_op.create_index('ix_assignments_user_status', ['user_id', 'status'], unique=False)

    op.create_table('votes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('overall', sa.Enum('a', 'b', 'tie', 'both_bad', name='vote_overall', native_enum=False, create_constraint=True, length=24), nullable=False),
    sa.Column('strength', sa.Enum('slight', 'clear', name='vote_strength', native_enum=False, create_constraint=True, length=24), nullable=True),
    sa.Column('identity', sa.JSON(), nullable=True),
    sa.Column('texture', sa.Enum('a', 'b', 'tie', name='vote_texture', native_enum=False, create_constraint=True, length=24), nullable=True),
    sa.Column('artifacts', sa.Enum('a', 'b', 'tie', name='vote_artifacts', native_enum=False, create_constraint=True, length=24), nullable=True),
    sa.Column('shown_left_id', sa.Integer(), nullable=False),
    sa.Column('duration_ms', sa.Integer(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('duration_ms IS NULL OR duration_ms >= 0', name=op.f('ck_votes_duration_nonnegative')),
    sa.ForeignKeyConstraint(['comparison_id'], ['comparisons.id'], name=op.f('fk_votes_comparison_id_comparisons'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['shown_left_id'], ['candidates.id'], name=op.f('fk_votes_shown_left_id_candidates'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_votes_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_votes')),
    sa.UniqueConstraint('comparison_id', 'user_id', name='vote_comparison_user_uq'),
    sa.UniqueConstraint('idempotency_key', name='vote_idempotency_key_uq')
    )
    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_votes_comparison_id'), ['comparison_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_votes_shown_left_id'), ['shown_left_id'], unique=False)
        batch_op.create_index('ix_votes_user_created', ['user_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_votes_user_id'), ['user_id'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('votes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_votes_user_id'))
        batch_op.drop_index('ix_votes_user_created')
        batch_op.drop_index(batch_op.f('ix_votes_shown_left_id'))
        batch_op.drop_index(batch_op.f('ix_votes_comparison_id'))

    op.drop_table('votes')
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.drop_index('ix_assignments_user_status')
        batch_op.drop_index(batch_op.f('ix_assignments_user_id'))
        batch_op.drop_index(batch_op.f('ix_assignments_shown_left_id'))
        batch_op.drop_index('ix_assignments_comparison_status')
        batch_op.drop_index(batch_op.f('ix_assignments_comparison_id'))

    op.drop_table('assignments')
    with op.batch_alter_table('comparisons', schema=None) as batch_op:
        batch_op.drop_index('ix_comparisons_sampling')
        batch_op.drop_index(batch_op.f('ix_comparisons_candidate_b_id'))
        batch_op.drop_index(batch_op.f('ix_comparisons_candidate_a_id'))

    op.drop_table('comparisons')
    with op.batch_alter_table('badcases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_badcases_user_id'))
        batch_op.drop_index(batch_op.f('ix_badcases_task'))
        batch_op.drop_index(batch_op.f('ix_badcases_candidate_id'))

    op.drop_table('badcases')
    with op.batch_alter_table('generation_subjects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generation_subjects_reference_photo_id'))
        batch_op.drop_index(batch_op.f('ix_generation_subjects_generation_id'))

    op.drop_table('generation_subjects')
    with op.batch_alter_table('candidates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_candidates_image_sha256'))
        batch_op.drop_index(batch_op.f('ix_candidates_generation_id'))

    op.drop_table('candidates')
    with op.batch_alter_table('generations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_generations_visitor_id'))
        batch_op.drop_index(batch_op.f('ix_generations_subjects_key'))
        batch_op.drop_index(batch_op.f('ix_generations_model_version_id'))
        batch_op.drop_index(batch_op.f('ix_generations_expires_at'))

    op.drop_table('generations')
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_exports_user_id'))

    op.drop_table('exports')
    op.drop_table('users')
    with op.batch_alter_table('reference_photos', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reference_photos_visitor_id'))
        batch_op.drop_index(batch_op.f('ix_reference_photos_sha256'))
        batch_op.drop_index(batch_op.f('ix_reference_photos_expires_at'))

    op.drop_table('reference_photos')
    op.drop_table('model_versions')

