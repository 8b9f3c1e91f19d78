"""How benchmarks end (bench/README.md): a verdict from the figures, one line when they cannot
run, never a traceback."""

from __future__ import annotations

import pytest

from bench.prefix_cache import TurnFigures, verdict


def _turn(ideal: int, cached: int, rollover: bool = False) -> TurnFigures:
    return TurnFigures(
        prompt=ideal + 40, cached=cached, ideal=ideal, achievable=ideal,
        rollover=rollover, diverge=None, cause="",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "met"),
    [
        ([_turn(100, 96), _turn(100, 20, rollover=True)], False),  # whole 58% < 85%
        ([_turn(100, 94), _turn(100, 94)], False),  # plain 94% < 95%
        ([_turn(100, 100), _turn(100, 100), _turn(100, 60, rollover=True)], True),
        ([], False),  # nothing measured is no pass
    ],
)
def test_prefix_cache_verdict_holds_the_stated_targets(
    rows: list[TurnFigures], met: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verdict(rows, "words") is met
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(line.startswith("target ") for line in lines)
    assert any(line.endswith("MISSED") for line in lines) is not met


def test_prefix_cache_free_output_has_no_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert verdict([_turn(100, 10)], "free") is True
    assert "no verdict" in capsys.readouterr().out
