"""SQLAlchemy models of the history (users, conversations, messages) and the knowledge base
(kb_documents, kb_chunks).

migrations/versions/ must describe exactly this schema; tests/test_migrations.py compares them.
Values that the core treats as enums (role, kind) are plain strings here, so that adding a
member never needs a schema change.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Full-text search objects that migration 0002 creates with raw SQL, per dialect (an FTS5 table
# and its shadow tables on SQLite, a generated tsvector column and its GIN index on PostgreSQL).
# SQLAlchemy cannot describe them portably, so schema comparisons leave them out.
FTS_TABLE_PREFIX = "kb_chunks_fts"
FTS_COLUMN = "search_vector"
FTS_INDEX = "ix_kb_chunks_search_vector"

# Deterministic constraint names, so that migrations can drop and alter them by name on every
# dialect (SQLite would otherwise leave them unnamed).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# On SQLite only INTEGER PRIMARY KEY is a rowid alias that autoincrements; BIGINT is not.
BigId = BigInteger().with_variant(Integer, "sqlite")

# The predicate of the partial index behind `pending` and `conversations_with_pending`. Queries
# must repeat it with literals (not bound parameters) for the planners to match the index.
PENDING_PREDICATE = "role = 'user' AND answered_by IS NULL"
# Its negation: the messages the retention policy may prune (ix_messages_created_at).
SETTLED_PREDICATE = f"NOT ({PENDING_PREDICATE})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), nullable=False, server_default=func.now())


class UserRow(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    external_id: Mapped[str] = mapped_column(String(255))
    display_name: Mapped[str] = mapped_column(String(255), server_default=text("''"))
    # The language the platform reports for the user (Telegram's language_code), kept current.
    language_code: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = _created_at()


class ConversationRow(Base):
    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "chat_id", "thread_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat_id: Mapped[str] = mapped_column(String(255))
    thread_id: Mapped[str] = mapped_column(String(255), server_default=text("''"))
    created_at: Mapped[datetime] = _created_at()
    summary: Mapped[str] = mapped_column(Text, server_default=text("''"))
    summary_through_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The summary's size in the model's tokens, as the window counts it (0: not known, e.g.
    # written before migration 0005): a window is rebuilt without asking the model again.
    summary_tokens: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    context_start_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # How many of its messages were redacted (deleted by their senders once answered): a
    # cached context window carries the count it was built at, so one that a turn in flight
    # writes back after a redaction is seen as stale (migration 0016).
    redactions: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Several people share it (a group, a server channel): its prompts label each user turn
    # with its sender (migration 0019). Set by its messages as they are recorded.
    shared: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # Who runs the conversation's turns, and until when, while Redis (the usual turn lock) is
    # unreachable: SqlStore.lease. NULL: nobody.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The fencing token: one more each time the lease is taken; an answer is recorded only
    # under the current one (migration 0008).
    lease_epoch: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # The turn whose answer is being shown: the messages it answers (ids from..to), the epoch
    # it runs under, the worker showing it (NULL: it gave up; anyone may finish it) and when
    # that worker was last heard of, and the platform's references to what was shown (JSON).
    # delivery_epoch NULL: no answer is being shown (SqlStore.begin_delivery).
    delivery_from: Mapped[int | None] = mapped_column(BigInteger)
    delivery_to: Mapped[int | None] = mapped_column(BigInteger)
    delivery_epoch: Mapped[int | None] = mapped_column(BigInteger)
    delivery_owner: Mapped[str | None] = mapped_column(String(64))
    delivery_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    delivery_ref: Mapped[str | None] = mapped_column(Text)


class MessageRow(Base):
    __tablename__ = "messages"
    __table_args__ = (
        # Serves context_messages and history: newest-first scans within one conversation.
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # A user's messages (migration 0017): the foreign key's ON DELETE SET NULL when a user
        # is erased (user_id alone), and their last message in a conversation (last_seen_id).
        Index("ix_messages_user_id_conversation_id_id", "user_id", "conversation_id", "id"),
        # Only unanswered user messages are in it, so it stays tiny however long history grows.
        Index(
            "ix_messages_pending",
            "conversation_id",
            "id",
            postgresql_where=text(PENDING_PREDICATE),
            sqlite_where=text(PENDING_PREDICATE),
        ),
        # Serves the retention policy's scan for messages older than its cutoff (SqlStore.prune,
        # migration 0018), so that every worker can afford it once a day. Partial: pending
        # messages are never pruned, and no other query, the orphan sweep's included (pending
        # messages older than a few seconds), can take it for a better path than its own.
        Index(
            "ix_messages_created_at",
            "created_at",
            postgresql_where=text(SETTLED_PREDICATE),
            sqlite_where=text(SETTLED_PREDICATE),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    user_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    role: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    # The assistant message that answered this user message; NULL while pending. No foreign
    # key: the fence in SqlStore.record_reply writes it together with that message. 0: the
    # message needs no answer (a group message kept for summaries, kind "observed").
    answered_by: Mapped[int | None] = mapped_column(BigInteger)
    # Turns that failed on this message while it was pending (migration 0007).
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # The platform's id of an inbound message (Telegram's message_id): replies thread to it.
    platform_message_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created_at()
    # When its sender last edited it, by the platform's clock (migration 0021): an older edit
    # handled after a newer one never replaces the newer text. NULL: never edited.
    edited_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class KbDocumentRow(Base):
    """One ingested file; `source` is its resolved absolute path."""

    __tablename__ = "kb_documents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(1024), unique=True)
    title: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # The collection it belongs to: a support site's ("" : the default one; migration 0009).
    collection: Mapped[str] = mapped_column(String(255), server_default=text("''"), index=True)
    # Loaded by Parley as the sample knowledge base, removed when the operator's own documents
    # come (bot.knowledge.sample; migration 0012).
    sample: Mapped[bool] = mapped_column(Boolean, server_default=false())


class KbChunkRow(Base):
    """A passage of a document, the unit of search. Its full-text index lives outside the
    models (see FTS_TABLE_PREFIX)."""

    __tablename__ = "kb_chunks"
    # Also the index behind the foreign key: deleting a document's chunks finds them by it.
    __table_args__ = (UniqueConstraint("document_id", "ordinal"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    document_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("kb_documents.id", ondelete="CASCADE")
    )
    ordinal: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    # The chunk's embedding, little-endian float32 (migration 0006); NULL until computed.
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


def include_in_schema_compare(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Alembic's include_object hook: skip the raw-SQL full-text objects of migration 0002."""
    if type_ == "table" and name is not None and name.startswith(FTS_TABLE_PREFIX):
        return False
    return not (type_ == "column" and name == FTS_COLUMN) and not (
        type_ == "index" and name == FTS_INDEX
    )


class TokenUsageRow(Base):
    """Model tokens spent per day and budget (bot.budget): one row per user ("user",
    "PLATFORM:ID") or support site ("site", its name) and day, in the budget's time zone.
    Added to by an upsert at the end of each turn; `parley usage` reads it (migration 0010)."""

    __tablename__ = "token_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    scope: Mapped[str] = mapped_column(String(8), primary_key=True)
    subject: Mapped[str] = mapped_column(String(300), primary_key=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Turns that asked the model, and turns refused because a budget was used up.
    turns: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    refused: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
