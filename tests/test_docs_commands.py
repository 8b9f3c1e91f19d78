"""What README.md and docs/ tell an operator to type is real: every `parley ...` written in
code (a code span or a fenced block) names a command the CLI has, with options it takes; every
`make TARGET` is a target of the Makefile; every file of this repository they name is there,
and so is each section that they, or a message of the code, point at (`docs/database.md,
"Retention"`); and the README opens with its two commands."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?ms)^```[^\n]*\n(.*?)^```")
_SPAN = re.compile(r"`([^`\n]+)`")
# Where a shell line's command ends: a comment, a pipe, a redirection, the next command.
_END = re.compile(r"\s#|\s\|\s|\s\\\|\s|&&|;|\s[<>]|\)")
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z-]*")  # also `[--yes]`


def _code(text: str) -> Iterator[str]:
    """Each line of a fenced block and each code span outside them."""
    for block in _FENCE.findall(text):
        yield from block.replace("\\\n", " ").splitlines()
    yield from _SPAN.findall(_FENCE.sub("", text))


def _invocations(code: str) -> Iterator[tuple[list[str], list[str]]]:
    """(command words, options) of each `parley ...` in a line of code. `a\\|b` (a table's
    way of writing alternatives) gives one invocation per alternative."""
    for alternative in _alternatives(_END.split(code)[0]):
        try:
            tokens = shlex.split(alternative)
        except ValueError:
            tokens = alternative.split()
        starts = [i for i, t in enumerate(tokens) if t == "parley" or t.endswith("/parley")]
        if not starts:
            continue
        rest = tokens[starts[0] + 1 :]
        while rest[:1] == ["-v"] or rest[:1] == ["--config"]:  # the global options
            rest = rest[2:] if rest[0] == "--config" else rest[1:]
        words = []
        for token in rest:
            if token.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", token):
                break
            words.append(token)
        options = [option for token in rest for option in _OPTION.findall(token)]
        if words:
            yield words, options


def _alternatives(code: str) -> list[str]:
    match = re.search(r"(\S+)\\\|(\S+)", code)
    if not match:
        return [code]
    head, tail = code[: match.start()], code[match.end() :]
    choices = match[0].split("\\|")
    return [alt for choice in choices for alt in _alternatives(head + choice + tail)]


def _help(words: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([*words, "--help"])
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, out.getvalue() + err.getvalue()


def _wrong_commands(text: str) -> list[str]:
    wrong = []
    for code in _code(text):
        for words, options in _invocations(code):
            status, shown = _help(words)
            if status != 0:
                wrong.append(f"parley {' '.join(words)}: not a command")
                continue
            wrong += [
                f"parley {' '.join(words)}: no option {option}"
                for option in options
                if not re.search(rf"(?<![\w-]){option}(?![\w-])", shown)
            ]
    return wrong


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_parley_command_in_the_docs_exists(doc: Path) -> None:
    assert _wrong_commands(doc.read_text()) == []


def test_a_wrong_command_or_option_is_found() -> None:
    doc = (
        "Run `parley kb lst`, then `parley db prune --older-then 30`.\n\n"
        "| `parley support site add\\|edit` | sites |\n\n"
        "```sh\n.venv/bin/parley doctor   # checks --everything\nparley usage --days 3 \\\n"
        "    --json\nparley usage --weeks 2\n```\n"
    )
    assert _wrong_commands(doc) == [
        "parley usage: no option --weeks",
        "parley kb lst: not a command",
        "parley db prune: no option --older-then",
        "parley support site edit: not a command",
    ]


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"(?m)^([a-z][\w-]*):", makefile))


def test_every_make_target_in_the_docs_exists() -> None:
    targets = _make_targets()
    named = {
        (doc.name, target)
        for doc in DOCS
        for code in _code(doc.read_text())
        for target in re.findall(r"(?:^|\s)make ([a-z][\w-]*)", code)
    }
    assert {(doc, target) for doc, target in named if target not in targets} == set()


def test_the_readme_opens_with_its_two_commands() -> None:
    """A new operator reads the title, then `make run` and `make test`, before anything else."""
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    first_code = next(i for i, line in enumerate(lines) if line.startswith("```"))
    assert all(line.startswith("#") for line in lines[1:first_code]), lines[1:first_code]
    assert lines[first_code + 1].startswith("make run ")
    assert lines[first_code + 2].startswith("make test ")


# A path in this repository: under one of its folders, ending in a file's extension or a "/".
_REPO_PATH = re.compile(
    r"(?<![\w/.-])((?:bot|backends|adapters|tests|bench|migrations|config)/[\w./-]*"
    r"(?:\.(?:py|md|toml|env|j2|jsonl|json|yaml)\b|/))"
)


def _missing_files(text: str) -> list[str]:
    """Each repository path in `text` that names nothing here (a placeholder in capitals,
    `bot/skills/NAME.py`, is not a path)."""
    named = {m for m in _REPO_PATH.findall(text) if not re.search(r"[A-Z*]", m)}
    return sorted(m for m in named if not (ROOT / m).exists())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_the_docs_name_exists(doc: Path) -> None:
    assert _missing_files(doc.read_text()) == []


def test_a_missing_file_is_found() -> None:
    doc = "See bot/settings.py and (tests/test_gone.py), `bench/data/eval/`, `bot/skills/NAME.py`."
    assert _missing_files(doc) == ["tests/test_gone.py"]


# A pointer at a section: `docs/database.md, "Retention"`, or a word: `(docs/discord.md, Scale)`.
_SECTION_REF = re.compile(r'docs/([a-z-]+\.md),?\s+(?:"([^"]+)"|([A-Z][a-z]+)\))')
# Where a section is named: a heading ("## 8. Scale"), or a paragraph's bold lead.
_SECTION_NAME = re.compile(r"(?m)^#+\s+(?:\d+\.\s+)?(.+)$|\*\*([^*]+?)\.?\*\*")
CODE = sorted(
    p for folder in ("bot", "adapters", "backends") for p in (ROOT / folder).rglob("*.py")
)
SOURCES = [*DOCS, ROOT / "config" / "parley.toml", *CODE]


# Inline code, whose asterisks (`***`, `**bold**`) are no bold lead's and would pair with one.
_CODE_SPAN = re.compile(r"`[^`\n]*`")


def _section_names(doc: str) -> list[str]:
    plain = _CODE_SPAN.sub(lambda span: span[0].replace("*", ""), doc)
    return [a or b for a, b in _SECTION_NAME.findall(plain)]


def test_asterisks_in_code_do_not_hide_a_bold_lead() -> None:
    doc = "A value is shown as `***` in the log.\n\n**Forgetting a user.** Run it.\n"
    assert "Forgetting a user" in _section_names(doc)


def _missing_sections(text: str) -> list[str]:
    missing = []
    for match in _SECTION_REF.finditer(text):
        doc, name = ROOT / "docs" / match[1], " ".join((match[2] or match[3]).split())
        names = _section_names(doc.read_text()) if doc.exists() else []
        if not any(" ".join(n.split()).lower().startswith(name.lower()) for n in names):
            missing.append(f"docs/{match[1]}, {name}")
    return missing


def test_every_section_the_docs_and_messages_point_at_exists() -> None:
    missing = {
        str(path.relative_to(ROOT)): found
        for path in SOURCES
        if (found := _missing_sections(path.read_text()))
    }
    assert missing == {}


def test_a_missing_section_is_found() -> None:
    text = (
        'See docs/database.md, "Retention", docs/conversations.md, "The context\n  window", '
        '"set discord.shard_count (docs/discord.md, Sharding)" and docs/cli.md, "Nowhere".'
    )
    assert _missing_sections(text) == ["docs/discord.md, Sharding", "docs/cli.md, Nowhere"]
