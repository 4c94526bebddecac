"""message reasoning

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:50:00.000000

The assistant message keeps its reasoning (the model's visible thinking) and when it began
and ended. Existing messages get no reasoning ("") and no times.
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reasoning', sa.Text(), nullable=False,
                                      server_default=''))
        batch_op.add_column(sa.Column('reasoning_started_at', sa.DateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('reasoning_ended_at', sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('message', schema=None) as batch_op:
        batch_op.drop_column('reasoning_ended_at')
        batch_op.drop_column('reasoning_started_at')
        batch_op.drop_column('reasoning')
