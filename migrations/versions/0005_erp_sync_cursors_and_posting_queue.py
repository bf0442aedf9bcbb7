"""ERP connectors: sync cursors and runs, the write-back queue (postings) and its attempts

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 14:03:42.201482

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('erp_sync_cursor',
    sa.Column('system', sa.String(length=20), nullable=False),
    sa.Column('entity', sa.String(length=20), nullable=False),
    sa.Column('cursor', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('system', 'entity', name=op.f('pk_erp_sync_cursor'))
    )
    op.create_table('erp_sync_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('system', sa.String(length=20), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.Column('ok', sa.Boolean(), nullable=False),
    sa.Column('stats', sa.JSON(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erp_sync_run'))
    )
    with op.batch_alter_table('erp_sync_run', schema=None) as batch_op:
        batch_op.create_index('ix_erp_sync_run_system', ['system', 'started_at'], unique=False)

    op.create_table('erp_posting',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adjustment_id', sa.Integer(), nullable=False),
    sa.Column('system', sa.String(length=20), nullable=False),
    sa.Column('doc_key', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('locked_until', sa.DateTime(), nullable=True),
    sa.Column('claim_token', sa.String(length=36), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('progress', sa.JSON(), nullable=False),
    sa.Column('erp_doc_no', sa.String(length=100), nullable=True),
    sa.Column('erp_doc_id', sa.String(length=100), nullable=True),
    sa.Column('erp_refs', sa.JSON(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('posted_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['adjustment_id'], ['adjustment.id'], name=op.f('fk_erp_posting_adjustment_id_adjustment')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erp_posting')),
    sa.UniqueConstraint('adjustment_id', name=op.f('uq_erp_posting_adjustment_id')),
    sa.UniqueConstraint('doc_key', name=op.f('uq_erp_posting_doc_key'))
    )
    with op.batch_alter_table('erp_posting', schema=None) as batch_op:
        batch_op.create_index('ix_erp_posting_due', ['state', 'next_attempt_at'], unique=False)

    op.create_table('erp_posting_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('posting_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('erp_doc_no', sa.String(length=100), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['posting_id'], ['erp_posting.id'], name=op.f('fk_erp_posting_attempt_posting_id_erp_posting')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erp_posting_attempt'))
    )
    with op.batch_alter_table('erp_posting_attempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erp_posting_attempt_posting_id'), ['posting_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('erp_posting_attempt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erp_posting_attempt_posting_id'))

    op.drop_table('erp_posting_attempt')
    with op.batch_alter_table('erp_posting', schema=None) as batch_op:
        batch_op.drop_index('ix_erp_posting_due')

    op.drop_table('erp_posting')
    with op.batch_alter_table('erp_sync_run', schema=None) as batch_op:
        batch_op.drop_index('ix_erp_sync_run_system')

    op.drop_table('erp_sync_run')
    op.drop_table('erp_sync_cursor')
