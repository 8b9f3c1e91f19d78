"""Log redaction: how redacting a database error that quotes a message grows with a long run
of blank lines in that message (bot/logsafety.py).

    .venv/bin/python -m bench.log_redaction                # 8,000 and 32,000 characters
    .venv/bin/python -m bench.log_redaction --chars 4096   # a Telegram message's worth

PostgreSQL's DETAIL of a violated constraint quotes the row or the key, message text as
written among it, and every log line goes through `LogSafetyFilter.redact`, which takes that
quote out. Each error here quotes a message that is a letter, `--chars` newlines and a
letter (a NOT NULL row and a UNIQUE key, as asyncpg and SQLAlchemy write them), at `--chars`
and at four times that; printed: the time of each redaction (best of 3) and their ratio.
Target (fixed before measuring): the ratio at most 8, where redacting in linear time gives
about 4 and the quadratic end of the quote before 2026-12-07 gave about 16 (55 ms at 4,000
newlines, 0.7 s at 16,000); and the quoted message redacted. Exit 1 when either is missed.
Tests assert no time: this is where the growth is checked.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from bench.entry import best_of_three, positive_int, run_main
from bot.logsafety import REDACTED, LogSafetyFilter

SQL = "\n[SQL: INSERT INTO notes (note, n) VALUES ($1::VARCHAR, $2::INTEGER)]"
ERRORS: dict[str, Callable[[str], str]] = {
    "NOT NULL row": lambda note: (
        'null value in column "n" of relation "notes" violates not-null constraint\n'
        f"DETAIL:  Failing row contains ({note}, null).{SQL}"
    ),
    "UNIQUE key": lambda note: (
        'duplicate key value violates unique constraint "notes_note_key"\n'
        f"DETAIL:  Key (note)=({note}) already exists.{SQL}"
    ),
}
GROWTH = 4
TARGET = 8.0


def _best(text: str) -> tuple[float, str]:
    """The best of 3 redactions' seconds, and the redacted text."""
    safety = LogSafetyFilter()
    return best_of_three(lambda: safety.redact(text))


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench.log_redaction")
    parser.add_argument("--chars", type=positive_int, default=8_000,
                        help="the smaller message's newlines (default 8,000)")  # fmt: skip
    args = parser.parse_args(argv)
    met = True
    for name, error in ERRORS.items():
        small = error("X" + "\n" * args.chars + "Z")
        large = error("X" + "\n" * (args.chars * GROWTH) + "Z")
        small_s, small_out = _best(small)
        large_s, large_out = _best(large)
        ratio = large_s / max(small_s, 1e-9)
        hidden = all(f"{REDACTED}\n[SQL: " in out and "Z" not in out.split("[SQL")[0]
                     for out in (small_out, large_out))  # fmt: skip
        ok = ratio <= TARGET and hidden
        met = met and ok
        print(f"{name:13} {len(small):>8} chars {small_s * 1000:8.1f} ms  {len(large):>8} chars "
              f"{large_s * 1000:8.1f} ms  ratio {ratio:5.1f} (target <= {TARGET:g})"
              f"{'' if hidden else '  MESSAGE NOT REDACTED'}"
              f"{'' if ok else '  MISSED'}")  # fmt: skip
    return met


if __name__ == "__main__":
    run_main("bench.log_redaction", lambda: main(sys.argv[1:]))
