"""Markdown splitting: how choosing where to cut a long reply grows with the window when the
reply is full of inline code spans and code blocks, or is one long line of a list marker and
spaces (adapters/kit/split.py).

    .venv/bin/python -m bench.markdown_split                 # windows of 2,048 and 8,192
    .venv/bin/python -m bench.markdown_split --limit 1024    # smaller windows

A reply longer than a message is cut into pieces, at a good place in each window of the
message's limit (Telegram's 4,096 UTF-16 units, Discord's 2,000 characters, Chatwoot's
150,000): never inside code, never right after a line's list marker. Each reply here is one
and a half windows of a short unit repeated (one-backtick spans with a space between, "`"
lines with no blank line between, fences) or of one line ("- ", spaces, a word), split at
`--limit` and at four times that; printed: the time of each split (best of 3) and their
ratio. Target (fixed before measuring): the ratio at most 8, where splitting in linear time
gives about 4 and the quadratic reading before 2026-12-07 gave 9 to 16 (each candidate cut
checked against every code span, each span's paragraph end searched to the window's end:
68 ms for one 4,096 window of "` ` "; each space's line read again from its start for a
list marker: 0.3 s for a 20,000 window, about 18 s for Chatwoot's 150,000); and every piece
within the limit. Exit 1 when either is missed. Tests assert no time: this is where the
growth is checked.

The same target holds for the knowledge base's citation filter (bot/skills/qa.py,
`only_given_citations`) reading a streamed answer that is one run of backticks, as a user can
ask a model to write, arriving 8 at a time, then a word: a run of `--limit` backticks and of
four times that. Before 2026-12-07 each delta's search for what may still arrive tried every
position of the held run (a run of 32,000 backticks then a word: 3.4 s on the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncGenerator

from adapters.kit.split import MIN_LIMIT, split_text
from bench.entry import best_of_three, run_main
from bot.skills.qa import only_given_citations

UNITS = {
    "spans": "` ` ",
    "tick lines": "`\n",
    "fences": "```\n",
    "marker, spaces": "- ",  # one line: a list marker, then only spaces (`_reply`)
}
GROWTH = 4
TARGET = 8.0


def _limit(text: str) -> int:
    value = int(text)
    if value < MIN_LIMIT:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_LIMIT}, not {value}")
    return value


def _reply(unit: str, limit: int) -> str:
    """One and a half windows of `unit`; a unit that is a line's start, then the line's
    spaces to that length and a word."""
    if unit.startswith("- "):
        return "- " + " " * (limit * 3 // 2) + "a"
    return unit * (limit * 3 // 2 // len(unit))


def _best(text: str, limit: int) -> tuple[float, bool]:
    """The best of 3 splits' seconds, and whether every piece was within `limit`."""
    seconds, pieces = best_of_three(lambda: split_text(text, limit))
    return seconds, len(pieces) > 1 and all(len(piece) <= limit for piece in pieces)


def _filtered(run: int) -> str:
    """The citation filter's output for a streamed run of `run` backticks, then a word."""

    async def stream() -> AsyncGenerator[str, None]:
        for _ in range(run // 8):
            yield "`" * 8
        yield " word [1]"

    async def shown() -> str:
        return "".join([delta async for delta in only_given_citations(stream(), 1)])

    return asyncio.run(shown())


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench.markdown_split")
    parser.add_argument("--limit", type=_limit, default=2048,
                        help="the smaller window, in characters (default 2,048)")  # fmt: skip
    args = parser.parse_args(argv)
    met = True
    for name, unit in UNITS.items():
        small_limit, large_limit = args.limit, args.limit * GROWTH
        small, large = (_reply(unit, limit) for limit in (small_limit, large_limit))
        small_s, small_fits = _best(small, small_limit)
        large_s, large_fits = _best(large, large_limit)
        ratio = large_s / max(small_s, 1e-9)
        fits = small_fits and large_fits
        ok = ratio <= TARGET and fits
        met = met and ok
        print(f"{name:14} window {small_limit:>6} {small_s * 1000:7.1f} ms  "
              f"window {large_limit:>6} {large_s * 1000:7.1f} ms  "
              f"ratio {ratio:5.1f} (target <= {TARGET:g})"
              f"{'' if fits else '  A PIECE OVER THE LIMIT'}"
              f"{'' if ok else '  MISSED'}")  # fmt: skip
    small_run, large_run = args.limit, args.limit * GROWTH
    small_s, small_out = best_of_three(lambda: _filtered(small_run))
    large_s, large_out = best_of_three(lambda: _filtered(large_run))
    ratio = large_s / max(small_s, 1e-9)
    whole = small_out.endswith(" word [1]") and len(large_out) == large_run // 8 * 8 + 9
    ok = ratio <= TARGET and whole
    met = met and ok
    print(f"{'citations':14} run {small_run:>9} {small_s * 1000:7.1f} ms  "
          f"run {large_run:>9} {large_s * 1000:7.1f} ms  "
          f"ratio {ratio:5.1f} (target <= {TARGET:g})"
          f"{'' if whole else '  TEXT LOST'}"
          f"{'' if ok else '  MISSED'}")  # fmt: skip
    return met


if __name__ == "__main__":
    run_main("bench.markdown_split", lambda: main(sys.argv[1:]))
