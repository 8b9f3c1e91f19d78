"""`parley eval` without a model: the shipped sets load, a slice of each runs through the app
and prints every figure (model-only ones as n/a), operator sets are read and checked."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bot.errors import ConfigError
from bot.evaluation import add_eval_parser, metrics
from bot.evaluation.cli import SHIPPED_SETS
from bot.evaluation.sets import SKILLS, load_sets, read_jsonl
from bot.settings import Settings

FIGURES = (
    "ROUGE-1 F1", "ROUGE-2 F1", "ROUGE-L F1", "BLEU", "chrF", "retrieval recall@3",
    "answer contains the fact", "citation precision", "accuracy",
)  # fmt: skip


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="parley")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["eval", *argv])


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    args = _args(*argv)
    status = await args.func(Settings(adapters=[]), args)
    return status, capsys.readouterr().out


def test_shipped_sets_have_thirty_items_per_skill_and_several_languages() -> None:
    sets = load_sets(sorted(SHIPPED_SETS.glob("*.jsonl")))
    for skill in SKILLS:
        assert sets.count(skill) >= 30, skill
    assert len({item.target for item in sets.translate}) >= 3
    assert {item.expected for item in sets.intent} == {"ask", "summarize", "translate", "chat"}


async def test_a_five_item_slice_prints_every_figure(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = await _run(capsys, "--limit", "5")
    assert status == 0
    assert "model: none" in out
    for figure in FIGURES:
        assert figure in out, figure
    lines = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    assert "n/a" in lines["translate"]  # needs a model
    for line in out.splitlines()[2:]:
        if "n/a" not in line:
            assert any(ch.isdigit() for ch in line), line


async def test_an_operator_set_and_one_skill(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"skill": "intent", "text": "translate to German: hello", "expected": "translate"},
        {"skill": "intent", "text": "nice weather", "expected": "chat"},
        {"skill": "summarize", "text": "One. Two.", "reference": "One."},
    ]
    path.write_text("# my set\n\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    status, out = await _run(capsys, "--set", str(path), "--skill", "intent")
    assert status == 0
    assert "accuracy" in out and "100.0%" in out and "ROUGE" not in out


def test_a_bad_line_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"skill": "ask", "question": "q", "fact": "f", "source": "a.md"}\n'
                    '{"skill": "translate", "text": "hi"}\n')  # fmt: skip
    with pytest.raises(ConfigError, match=r"bad.jsonl, line 2: .*target"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[" * 100_000, "line 1: nested too deeply"),
        ('{"skill": "intent", "text": "hi", "expected": "dance"}', "line 1: intent.expected"),
        ('{"skill": "translate", "text": "hi", "target": "xx-invalid", "reference": "x"}',
         "line 1: translate.target: .*Unknown language 'xx-invalid'"),
    ],
)  # fmt: skip
def test_a_set_parley_cannot_score_is_refused_not_scored_as_misses(
    tmp_path: Path, line: str, says: str
) -> None:
    """A label no intent has scored 0% as if measured; deep nesting was a RecursionError
    traceback."""
    path = tmp_path / "odd.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=says):
        read_jsonl(path)


def test_a_set_that_never_ends_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"/dev/zero: over 64 MB"):
        read_jsonl(Path("/dev/zero"))


async def test_a_missing_knowledge_base_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--kb` naming nothing gave "retrieval recall@3 0.0%" and exit 0."""
    with pytest.raises(ConfigError, match=r"^--kb .*/nope: no such file or folder$"):
        await _run(capsys, "--kb", str(tmp_path / "nope"), "--skill", "ask", "--limit", "1")


def test_metrics() -> None:
    same = ["the cat sat on the mat"]
    assert metrics.bleu(same, same) == pytest.approx(100)
    scores = metrics.rouge(["the cat sat"], ["the cat sat"])
    assert scores is not None and scores.rouge2 == 100.0
    assert metrics.rouge([], []) is None and metrics.share(0, 0) is None
    assert metrics.contains_any("Set **`lock_ttl_s`**  to", ["LOCK_TTL_S"])
    assert metrics.cited_numbers("as [2] says, and [1], [2]") == [2, 1]


def test_the_help_names_the_folder_of_the_shipped_sets(capsys: pytest.CaptureFixture[str]) -> None:
    """`parley eval --help` said the default was eval/*.jsonl: an operator looked for an eval/
    folder where they stood; the sets are in bench/data/eval/ (docs/evaluation.md)."""
    parser = argparse.ArgumentParser(prog="parley")
    add_eval_parser(parser.add_subparsers())
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "default: bench/data/eval/*.jsonl" in shown
