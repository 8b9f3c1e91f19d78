"""`parley run` freezes its start-up heap, so that a full garbage collection does not stop
every conversation for the time it takes to walk the models and lexicons loaded at start."""

from __future__ import annotations

import gc

from bot.cli_commands import settle_heap
from bot.sentiment.classifier import warm


def test_start_up_objects_leave_the_collectors_walk() -> None:
    warm()  # the language identifier and every lexicon, as `parley run` loads them
    tracked = len(gc.get_objects())
    try:
        settle_heap()
        assert gc.get_freeze_count() >= tracked // 2  # what start-up made is frozen
        assert len(gc.get_objects()) < tracked // 10  # and no longer walked by a collection
    finally:
        gc.unfreeze()  # the test process goes on as before
