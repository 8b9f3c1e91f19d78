"""Handoff phrases: how the no-model reading of "the customer asks for a person" grows with a
long message of negated requests (bot/handoff/phrases.py).

    .venv/bin/python -m bench.handoff_phrases                # 20,000 and 80,000 characters
    .venv/bin/python -m bench.handoff_phrases --chars 5000   # smaller messages

Each message repeats one negated request ("I don't want to talk to a person", and in Arabic),
with and without a comma between the requests, so every request in it is read to its end. It
is read at `--chars` characters and at four times that; printed: the time of each (best of
3) and their ratio. Target (fixed before measuring): the ratio at most 8, where reading in
linear time gives about 4 and the quadratic reading before 2026-12-06 gave about 16 (0.2 s per
10,000 characters at 10,000 and growing); and no such message read as a request. Exit 1 when
either is missed. Tests assert no time: this is where the growth is checked.
"""

from __future__ import annotations

import argparse
import sys

from bench.entry import best_of_three, positive_int, run_main
from bot.handoff.phrases import asks_for_person

UNITS = {
    "en, commas": "I don't want to talk to a person, ",
    "en, no marks": "I don't want to talk to a person ",
    "ar, commas": "لا أريد التحدث مع موظف، ",
    "ar, no marks": "ما بدي احكي مع حدا ",
}
GROWTH = 4
TARGET = 8.0


def _best(text: str) -> tuple[float, bool]:
    """The best of 3 readings' seconds, and what was read."""
    return best_of_three(lambda: asks_for_person(text))


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(prog="python -m bench.handoff_phrases")
    parser.add_argument("--chars", type=positive_int, default=20_000,
                        help="the smaller message's length (default 20,000)")  # fmt: skip
    args = parser.parse_args(argv)
    met = True
    for name, unit in UNITS.items():
        small = unit * max(1, args.chars // len(unit))
        large = small * GROWTH
        small_s, small_asked = _best(small)
        large_s, large_asked = _best(large)
        ratio = large_s / max(small_s, 1e-9)
        ok = ratio <= TARGET and not (small_asked or large_asked)
        met = met and ok
        print(f"{name:14} {len(small):>8} chars {small_s * 1000:8.1f} ms  {len(large):>8} chars "
              f"{large_s * 1000:8.1f} ms  ratio {ratio:5.1f} (target <= {TARGET:g})"
              f"{'' if not (small_asked or large_asked) else '  READ AS A REQUEST'}"
              f"{'' if ok else '  MISSED'}")  # fmt: skip
    return met


if __name__ == "__main__":
    run_main("bench.handoff_phrases", lambda: main(sys.argv[1:]))
