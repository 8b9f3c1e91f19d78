"""The question's words, and the full-text statements of each database engine: the search
used over `knowledge.max_memory_chunks`, where the in-memory index (bot.knowledge.lexical)
is not built.

A user's question is never passed to the engine's query language as typed: it is cut into
words (letters and digits, any script), so quotes, operators, `*`, `:` or brackets can neither
break the query nor change its meaning. The words are joined with OR, and a passage scores the
sum, over the words it contains, of the word's rarity (inverse document frequency) times how
often it holds the word, the heading path counting twice as much as the text:

- SQLite: FTS5's `bm25` does exactly that.
- PostgreSQL: `ts_rank` scores each passage alone (a word in every passage weighs as much as a
  word in one), so the statement counts each word's passages first (one GIN lookup per word)
  and sums `idf(word) * ts_rank(passage, word)` with BM25's idf. Weights `{0, 0, 0.5, 1}` make
  the heading path (weight A) count twice the text (weight B), as on SQLite.

A question in natural language rarely has all its words in one passage, so AND would miss most
answers. Each statement returns candidate chunk ids, best first; KnowledgeBase groups them by
section.
"""

from __future__ import annotations

import re

import sqlalchemy as sa

_WORD = re.compile(r"\w+")
# A question longer than this is cut: the ranking gains nothing from more words, and the
# engines' cost grows with each OR branch.
MAX_TERMS = 32

# Words that carry no topic in a question about technical text: articles, pronouns, auxiliary
# verbs, question words and greetings. Prepositions and negations stay ("WITH clause",
# "insert into", "not null", "sort by", "import from", "or"), since in documentation they are
# often part of the name of the thing asked about; rarity weighting keeps them from dominating.
_STOP_LIST = """a an the and but if then than so
    i me my mine we us our you your he him his she her it its they them their
    this that these those there here
    is are was were be been being am do does did doing done have has having had
    can could would should shall will may might must
    how what when where which who whom whose why
    of to at
    please thanks thank hi hello hey
    just also very really some any"""
STOP_WORDS = frozenset(_STOP_LIST.split())

# The location (heading path) counts twice as much as the text, like PG_RANK_WEIGHTS below.
SQLITE_SEARCH = sa.text(
    """SELECT rowid AS id, -bm25(kb_chunks_fts, 2.0, 1.0) AS score
       FROM kb_chunks_fts
       WHERE kb_chunks_fts MATCH :query
         AND rowid IN (SELECT c.id FROM kb_chunks AS c JOIN kb_documents AS d
                       ON d.id = c.document_id WHERE d.collection = :collection)
       ORDER BY bm25(kb_chunks_fts, 2.0, 1.0), rowid
       LIMIT :k"""
)

# {D, C, B, A}: the location is weight A, the text weight B (migration 0006); 1 / 0.5 = 2.
PG_RANK_WEIGHTS = "{0, 0, 0.5, 1}"
# Normalisation 1 divides by 1 + log(length): a long passage does not win by length alone.
# 'parley_english' stems like 'english' but drops no stop word (migration 0006).
POSTGRES_SEARCH = sa.text(
    f"""WITH terms AS (
           SELECT DISTINCT plainto_tsquery('parley_english', t) AS query
           FROM unnest(CAST(:terms AS text[])) AS t
       ),
       total AS (SELECT count(*) AS n FROM kb_chunks),
       weighted AS (
           SELECT terms.query, ln(1 + (total.n - df.n + 0.5) / (df.n + 0.5)) AS idf
           FROM terms CROSS JOIN total,
                LATERAL (SELECT count(*) AS n FROM kb_chunks AS c
                         WHERE c.search_vector @@ terms.query) AS df
           WHERE df.n > 0
       )
       SELECT c.id,
              sum(w.idf * ts_rank('{PG_RANK_WEIGHTS}', c.search_vector, w.query, 1)) AS score
       FROM weighted AS w
       JOIN kb_chunks AS c ON c.search_vector @@ w.query
       JOIN kb_documents AS d ON d.id = c.document_id AND d.collection = :collection
       GROUP BY c.id
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


def search_statement(
    dialect: str, terms: list[str], k: int, collection: str = ""
) -> tuple[sa.TextClause, dict[str, object]]:
    """(statement, parameters) giving up to k rows (id, score) of `collection`, best first."""
    if dialect == "sqlite":
        return SQLITE_SEARCH, {"query": fts5_query(terms), "k": k, "collection": collection}
    # plainto_tsquery reads each word as plain text, never as an operator ("or", "!", ":").
    return POSTGRES_SEARCH, {"terms": terms, "k": k, "collection": collection}
