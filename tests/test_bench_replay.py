"""The core-overhead bench's replay plan: which calls a captured turn becomes, and how long the
turn worked before each (what the paced replay reproduces). No timing is measured here: the
events carry made-up clock readings."""

from __future__ import annotations

from bench.core_overhead import ReplayTurn, Tx, prepare_replay

INSERT = "INSERT INTO messages (content, idempotency_key) VALUES (?, ?)"
SELECT = "SELECT id FROM messages WHERE conversation_id = ?"


def test_steps_carry_the_turns_own_work_before_each_call() -> None:
    events = [
        ("end", 1_000),  # the turn starts
        # a store call in one transaction (SQLite: begin from the runner's thread)
        ("start", 1_400),
        ("begin", False),
        ("sql", INSERT, ("hello", "pbidem-run-1")),
        ("commit",),
        ("end", 1_900),
        # a read: no commit, the call's return ends it
        ("start", 2_500),
        ("begin", False),
        ("sql", SELECT, (7,)),
        ("end", 2_700),
        # a Redis command, then a pipeline
        ("start", 3_000),
        ("redis", ("GET", "pfx:ctx:7"), {}),
        ("end", 3_100),
        ("start", 3_150),
        ("pipeline", True, ((("SET", "pfx:ctx:7", b"w"), {}),)),
        ("end", 3_300),
    ]
    plan = prepare_replay(ReplayTurn(events, 0, None), 3, "pfx", "pfx-replay")

    assert [gap for gap, _ in plan] == [400, 600, 300, 50]
    write, read, get, pipeline = (step for _, step in plan)
    assert isinstance(write, Tx) and write.end == "commit" and not write.autocommit
    # The idempotency key is made unique per replay; other parameters are kept.
    assert write.statements == [(INSERT, ("hello", "pbidem-run-1-r3"))]
    assert isinstance(read, Tx) and read.statements == [(SELECT, (7,))]
    assert read.end == "rollback"  # nothing to commit: the replay ends it as the store did
    assert get == ("redis", ("GET", "pfx-replay:ctx:7"), {})
    assert pipeline == ("pipeline", True, ((("SET", "pfx-replay:ctx:7", b"w"), {}),))


def test_calls_without_clock_readings_are_replayed_back_to_back() -> None:
    # SQL seen only through engine events of an older capture: no marks, no gaps.
    events = [("begin", True), ("sql", SELECT, (1,)), ("sql", SELECT, (2,))]
    plan = prepare_replay(ReplayTurn(events, 0, None), 1, "", "")
    assert len(plan) == 1
    gap, step = plan[0]
    assert gap == 0
    assert isinstance(step, Tx) and step.autocommit and len(step.statements) == 2
