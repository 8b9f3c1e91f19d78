"""Telegram messages are known by their chat and message id, no longer by the update_id.

After a week without updates the Bot API picks the next update_id at random, so a new message
could come with the update_id of one recorded long ago and be taken for it delivered again:
recorded as a duplicate and never answered. The adapter now keys a message
`telegram:<chat_id>:<message_id>`, which stays unique. The keys recorded by earlier versions
(`telegram:<update_id>`) are rewritten to that form from the message's own conversation and
platform id, so that an update recorded before the upgrade and delivered again after it is
still recognised and answered once.

Downgrade leaves the keys as they are: the update_id they were made from is not stored.
A message recorded twice (after a downgrade, an earlier version took a delivery again for a
new message) keeps the older form on all but its first row: the key is unique, and a clash would
have stopped the upgrade here. (This revision was changed so, before any release, after a
review: a database where the first form stopped stays at 0013 and runs it again.)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `_` is LIKE's any-character: the patterns hold none. A key of the new form has two colons.
_REKEY = """
UPDATE messages
SET idempotency_key = 'telegram:'
    || (SELECT c.chat_id FROM conversations c WHERE c.id = messages.conversation_id)
    || ':' || platform_message_id
WHERE idempotency_key LIKE 'telegram:%'
  AND idempotency_key NOT LIKE 'telegram:%:%'
  AND platform_message_id IS NOT NULL
  AND platform_message_id <> ''
  AND EXISTS (
    SELECT 1 FROM conversations c
    WHERE c.id = messages.conversation_id AND c.platform = 'telegram'
  )
  AND NOT EXISTS (
    SELECT 1 FROM messages m
    WHERE m.conversation_id = messages.conversation_id
      AND m.platform_message_id = messages.platform_message_id
      AND m.id < messages.id
      AND m.idempotency_key LIKE 'telegram:%'
      AND m.idempotency_key NOT LIKE 'telegram:%:%'
  )
  AND NOT EXISTS (
    SELECT 1 FROM messages m
    WHERE m.idempotency_key = 'telegram:'
      || (SELECT c.chat_id FROM conversations c WHERE c.id = messages.conversation_id)
      || ':' || messages.platform_message_id
  )
"""


def upgrade() -> None:
    # For the look for an older row of the same message, only while this runs: without it
    # each row scanned its whole conversation (16,000 rows of one group: 12.8 s on SQLite).
    op.create_index(_LOOKUP, "messages", ["conversation_id", "platform_message_id"])
    op.execute(_REKEY)
    op.drop_index(_LOOKUP, "messages")


_LOOKUP = "ix_messages_rekey_0014"


def downgrade() -> None:
    pass
