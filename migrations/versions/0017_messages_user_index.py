"""An index on messages by sender: (user_id, conversation_id, id).

Two statements found a user's messages by reading past everyone else's. Erasing a user
(`DELETE /v1/visitor`, SqlStore.erase) deletes their users row, and the foreign key's ON DELETE
SET NULL then looked for their messages with a scan of the whole messages table, every
conversation's, in the erasing transaction (PostgreSQL, 300,000 messages: 43 ms in the key's
trigger; SQLite checks its foreign keys the same way). And the summarize skill's "since I last
spoke" (SqlStore.last_seen_id: the user's last message in a conversation before a given one)
read the conversation backwards from the newest message, every other member's messages
filtered out one by one (a group of 100,000 messages: 99,990 rows, 24 ms). With user_id first
the key's look-up is an index search, and with conversation_id and id after it the last message
of a user in a conversation is one entry (0.15 ms and 0.09 ms).

Creating it holds off writes to messages while it is built (as any CREATE INDEX in a
transaction does): seconds on a large history.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_messages_user_id_conversation_id_id"


def upgrade() -> None:
    op.create_index(_INDEX, "messages", ["user_id", "conversation_id", "id"])


def downgrade() -> None:
    op.drop_index(_INDEX, "messages")
