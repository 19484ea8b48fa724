"""deployment_runtime.port: the public port a deployment's routes are served on, so that
every gateway on a port can read the tables of all the deployments sharing it

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_runtime") as batch:
        batch.add_column(sa.Column("port", sa.Integer(), nullable=True))
        batch.create_index("ix_deployment_runtime_port", ["port"])


def downgrade() -> None:
    with op.batch_alter_table("deployment_runtime") as batch:
        batch.drop_index("ix_deployment_runtime_port")
        batch.drop_column("port")
