"""Full-text search statements, one per database engine, and the query sanitiser.

A user's question is never passed to the engine's query language as typed: it is cut into
words (letters and digits, any script), so quotes, operators, `*`, `:` or brackets can neither
break the query nor change its meaning. The words are joined with OR and the engine's ranking
(bm25 on SQLite, ts_rank on PostgreSQL) puts the passages that match the most, and the
rarest, words first: a question in natural language rarely has all its words in one passage,
so AND would miss most answers.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

_WORD = re.compile(r"\w+")
# A question longer than this is cut: the ranking gains nothing from more words, and the
# engines' cost grows with each OR branch.
MAX_TERMS = 32

# Words that carry no topic. PostgreSQL's 'english' configuration drops these itself; FTS5 has
# no stop list, so they are dropped here (unless nothing else is left).
_STOP_LIST = """a an and are as at be been but by can could did do does for from had has have how
    i if in into is it its me my no not of on or our should so than that the their them then there
    these they this to was we were what when where which who why will with would you your"""
STOP_WORDS = frozenset(_STOP_LIST.split())

# Location (the heading path) counts twice as much as the text, like weight A against B in
# PostgreSQL's generated column.
SQLITE_SEARCH = sa.text(
    """SELECT c.text, d.title, c.location, d.source,
              -bm25(kb_chunks_fts, 2.0, 1.0) AS score
       FROM kb_chunks_fts
       JOIN kb_chunks AS c ON c.id = kb_chunks_fts.rowid
       JOIN kb_documents AS d ON d.id = c.document_id
       WHERE kb_chunks_fts MATCH :query
       ORDER BY bm25(kb_chunks_fts, 2.0, 1.0), c.id
       LIMIT :k"""
)

# ts_rank, not ts_rank_cd: cover density rewards query words found close together, which an
# OR of a question's words rarely gives; on bench/data/docs_questions.json ts_rank finds 95%
# of the answers in the top 3, ts_rank_cd 80% (any of its normalisations: 76-80%).
POSTGRES_SEARCH = sa.text(
    """SELECT c.text, d.title, c.location, d.source,
              ts_rank(c.search_vector, q.query) AS score
       FROM kb_chunks AS c
       JOIN kb_documents AS d ON d.id = c.document_id,
            websearch_to_tsquery('english', :query) AS q(query)
       WHERE c.search_vector @@ q.query
       ORDER BY score DESC, c.id
       LIMIT :k"""
)


def query_terms(question: str) -> list[str]:
    """The distinct lower-cased words of `question`, stop words left out, at most MAX_TERMS."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(question)))
    content = [w for w in words if w not in STOP_WORDS]
    return (content or words)[:MAX_TERMS]


def fts5_query(terms: list[str]) -> str:
    # Each word is a quoted string: FTS5 reads nothing inside quotes as syntax, and \w+ words
    # hold no quote to escape.
    return " OR ".join(f'"{term}"' for term in terms)


def websearch_query(terms: list[str]) -> str:
    # websearch_to_tsquery never raises on any input; "or" as a word would read as the
    # operator, so it is left out (it is a stop word in 'english' anyway).
    return " or ".join(term for term in terms if term != "or")


def search_statement(
    dialect: str, terms: list[str], k: int
) -> tuple[sa.TextClause, dict[str, object]]:
    if dialect == "sqlite":
        return SQLITE_SEARCH, {"query": fts5_query(terms), "k": k}
    return POSTGRES_SEARCH, {"query": websearch_query(terms), "k": k}
