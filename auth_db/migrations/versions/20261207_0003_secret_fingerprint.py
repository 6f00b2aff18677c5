"""Secret fingerprints: what every replica must share, recorded by the first one and compared at each start-up.

One row per checked value (``GATEWAY_SECRET_KEY``, ``TOTP_ENCRYPTION_KEY``, ``JWT_ISSUER/JWT_AUDIENCE``), holding
an HMAC under a key derived for this check only — never the value or a plain hash of it.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 01:04:14.232477
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import auth_db.types

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('secret_fingerprint',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('fingerprint', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recorded_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('recorded_by', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('recorded_via', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_secret_fingerprint'))
    )


def downgrade() -> None:
    op.drop_table('secret_fingerprint')
