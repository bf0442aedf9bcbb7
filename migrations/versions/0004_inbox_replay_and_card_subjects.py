"""inbox replay (acknowledged events kept until processed) and card subjects on the outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:10:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_seen', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('processed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject', sa.String(length=120), nullable=True))
        batch_op.create_index(batch_op.f('ix_outbox_message_subject'), ['subject'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outbox_message_subject'))
        batch_op.drop_column('subject')
    with op.batch_alter_table('inbound_seen', schema=None) as batch_op:
        batch_op.drop_column('attempts')
        batch_op.drop_column('processed_at')
        batch_op.drop_column('event')
