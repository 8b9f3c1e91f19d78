"""`parley eval [--set PATH]... [--skill NAME]... [--limit N] [--kb PATH]...`

Runs the evaluation sets (default: every *.jsonl under bench/data/eval/) on the configured
backend and prints one table: skill, figure, value, items, seconds. Figures that need a model
read "n/a" without one. Exit status 0 when the run finished, whatever the figures (the table
reports, it does not judge); a bad set or setting ends in one line and status 2 (bot.cli).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bot.errors import ConfigError
from bot.knowledge.sample import sample_folder
from bot.settings import Settings

from .runner import Report, evaluate
from .sets import SKILLS, EvalSet, load_sets

SHIPPED_SETS = Path(__file__).resolve().parents[2] / "bench" / "data" / "eval"


def add_eval_parser(sub: Any) -> None:
    """Register `eval` on the `parley` command's subparsers."""
    parser = sub.add_parser("eval", help="measure each skill's quality on evaluation sets")
    parser.add_argument(
        "--set", dest="sets", type=Path, action="append", metavar="PATH",
        help="a JSONL evaluation set (repeatable; default: bench/data/eval/*.jsonl)",
    )  # fmt: skip
    parser.add_argument(
        "--skill", dest="skills", action="append", choices=SKILLS,
        help="evaluate only this skill (repeatable; default: every skill with items)",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, metavar="N", help="the first N items of each skill")
    parser.add_argument(
        "--kb", type=Path, action="append", metavar="PATH",
        help="files or folders for the question-answering knowledge base "
        "(default: knowledge.sample_dir, Parley's own docs/)",
    )  # fmt: skip
    parser.set_defaults(func=cmd_eval)


async def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    sets = _chosen(load_sets(args.sets or _shipped_sets()), args.skills, args.limit)
    for path in args.kb or []:
        if not path.exists():  # an empty knowledge base would score 0% as if measured
            raise ConfigError(f"--kb {path}: no such file or folder")
    kb_paths = args.kb or _sample(settings)
    report = await evaluate(settings, sets, kb_paths=kb_paths)
    print(format_report(report))
    return 0


def _shipped_sets() -> list[Path]:
    paths = sorted(SHIPPED_SETS.glob("*.jsonl"))
    if not paths:
        raise ConfigError(f"no evaluation sets in {SHIPPED_SETS}: name one with --set PATH")
    return paths


def _chosen(sets: EvalSet, skills: list[str] | None, limit: int | None) -> EvalSet:
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    chosen = sets.limited(limit)
    for skill in SKILLS:
        if skills and skill not in skills:
            getattr(chosen, skill).clear()
    if not any(chosen.count(skill) for skill in SKILLS):
        raise ConfigError("the evaluation sets have no items for the chosen skills")
    return chosen


def _sample(settings: Settings) -> list[Path]:
    folder = sample_folder(settings.knowledge.sample_dir)
    return [folder] if folder is not None else []


def format_report(report: Report) -> str:
    rows = [("SKILL", "FIGURE", "VALUE", "ITEMS", "SECONDS", "NOTE")]
    for result in report.results:
        for n, figure in enumerate(result.figures):
            first = n == 0
            rows.append((
                result.skill if first else "",
                figure.name,
                "n/a" if figure.value is None else f"{figure.value:.1f}{figure.unit}",
                str(result.items) if first else "",
                f"{result.seconds:.1f}" if first else "",
                figure.note,
            ))  # fmt: skip
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    lines = [f"model: {report.model}"]
    for row in rows:
        cells = [
            cell.rjust(width) if c in (2, 3, 4) else cell.ljust(width)
            for c, (cell, width) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
