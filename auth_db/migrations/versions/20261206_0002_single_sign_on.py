"""Single sign-on: identities at OpenID Connect providers, invites, logins in flight, the logout replay guard.

Sessions started by SSO remember the provider's issuer, sid and subject (back-channel logout names them),
the encrypted ID token (RP-initiated logout) and a cap no refresh passes; users get the SSO-only flag.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 21:36:24.389305
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import auth_db.types

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('oidc_login',
    sa.Column('state_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('binding_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('provider_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('nonce', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('code_verifier', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('return_to', sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
    sa.Column('link_user_id', sa.Uuid(), nullable=True),
    sa.Column('invite_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', auth_db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['link_user_id'], ['user.id'], name=op.f('fk_oidc_login_link_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('state_hash', name=op.f('pk_oidc_login'))
    )
    with op.batch_alter_table('oidc_login', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_login_expires_at'), ['expires_at'], unique=False)

    op.create_table('oidc_logout_jti',
    sa.Column('issuer', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('expires_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('issuer', 'jti', name=op.f('pk_oidc_logout_jti'))
    )
    with op.batch_alter_table('oidc_logout_jti', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_oidc_logout_jti_expires_at'), ['expires_at'], unique=False)

    op.create_table('sso_invite',
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('provider_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', auth_db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['user.id'], name=op.f('fk_sso_invite_created_by_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_sso_invite_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_sso_invite'))
    )
    with op.batch_alter_table('sso_invite', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sso_invite_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_sso_invite_user_id'), ['user_id'], unique=False)

    op.create_table('user_identity',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('provider_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('issuer', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('created_at', auth_db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.Uuid(), nullable=True),
    sa.Column('last_login_at', auth_db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['created_by'], ['user.id'], name=op.f('fk_user_identity_created_by_user'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['user.id'], name=op.f('fk_user_identity_user_id_user'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_identity')),
    sa.UniqueConstraint('issuer', 'subject', name='uq_user_identity_issuer_subject')
    )
    with op.batch_alter_table('user_identity', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_user_identity_user_id'), ['user_id'], unique=False)

    with op.batch_alter_table('session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('idp_issuer', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('idp_sid', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('idp_subject', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('id_token_encrypted', sa.String(length=12000), nullable=True))
        batch_op.add_column(sa.Column('not_after', auth_db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_session_idp_sid', ['idp_issuer', 'idp_sid'], unique=False)
        batch_op.create_index('ix_session_idp_subject', ['idp_issuer', 'idp_subject'], unique=False)

    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sso_only', sa.Boolean(), server_default=sa.false(), nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('user', schema=None) as batch_op:
        batch_op.drop_column('sso_only')

    with op.batch_alter_table('session', schema=None) as batch_op:
        batch_op.drop_index('ix_session_idp_subject')
        batch_op.drop_index('ix_session_idp_sid')
        batch_op.drop_column('not_after')
        batch_op.drop_column('id_token_encrypted')
        batch_op.drop_column('idp_subject')
        batch_op.drop_column('idp_sid')
        batch_op.drop_column('idp_issuer')

    with op.batch_alter_table('user_identity', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_user_identity_user_id'))

    op.drop_table('user_identity')
    with op.batch_alter_table('sso_invite', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sso_invite_user_id'))
        batch_op.drop_index(batch_op.f('ix_sso_invite_expires_at'))

    op.drop_table('sso_invite')
    with op.batch_alter_table('oidc_logout_jti', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_logout_jti_expires_at'))

    op.drop_table('oidc_logout_jti')
    with op.batch_alter_table('oidc_login', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_oidc_login_expires_at'))

    op.drop_table('oidc_login')
