"""Issued cards carry their issuing client: iss and tenant (no patient data).

Feedback is accepted only from the client (and tenant) that was given the card, and the
feedback summary can be read per client or tenant.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_cards") as batch:
        batch.add_column(sa.Column("client_iss", sa.String(255), nullable=True))
        batch.add_column(sa.Column("tenant", sa.String(255), nullable=True))
    op.create_index("ix_issued_cards_client", "issued_cards", ["client_iss", "tenant"])


def downgrade() -> None:
    op.drop_index("ix_issued_cards_client", table_name="issued_cards")
    with op.batch_alter_table("issued_cards") as batch:
        batch.drop_column("tenant")
        batch.drop_column("client_iss")
