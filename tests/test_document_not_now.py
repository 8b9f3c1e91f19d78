"""A document whose reader the kernel killed (SIGKILL, not its own memory cap: the OOM killer,
the host short of memory) on a fresh message: the user was told the document "needs too much
memory to read", which says the file is at fault where the host was; the same file may be read
a moment later. They are told to send it again in a moment, in their language."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from telegram import Update

from bot import documents
from tests.adapter_harness import telegram_harness
from tests.doubles import ScriptedBackend
from tests.telegram_updates import message, person

CHAT, ADA = 4243, 7
NOTES = "# Notes\nThe meeting is on Monday."
DOC = {"file_id": "doc-1", "file_unique_id": "u1", "file_name": "notes.md",
       "mime_type": "text/markdown", "file_size": len(NOTES)}  # fmt: skip
WAIT_S = 10
NOT_NOW = {
    "en": "I could not read that document just now. Please send it again in a moment.",
    "de": "Ich konnte dieses Dokument gerade nicht lesen. Bitte schicke es gleich noch einmal.",
}


def _killed_by_the_kernel(*_: object) -> None:
    """A reading child the kernel ends: spawned by reference, so a module-level function."""
    os.kill(os.getpid(), signal.SIGKILL)


def _document(language: str) -> dict[str, Any]:
    body = message(CHAT, user_id=ADA, document=DOC, caption="What day?",
                   **{"from": person(ADA, "Ada", language=language)})  # fmt: skip
    return {"update_id": 1, "message": body}


@pytest.mark.parametrize("language", sorted(NOT_NOW))
async def test_a_fresh_document_whose_reader_the_kernel_killed_is_asked_again(
    language: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = ScriptedBackend(lambda request: "Monday.")
    async with telegram_harness(tmp_path, backend) as h:
        h.api.files["doc-1"] = NOTES.encode()
        monkeypatch.setattr(documents, "read_in_child", _killed_by_the_kernel)
        await h.adapter.handle_update(Update.de_json(_document(language), h.adapter.bot))
        async with asyncio.timeout(WAIT_S):
            (said,) = await h.api.wait_for_messages(CHAT, 1)
        await h.idle()
        assert said == NOT_NOW[language]
        assert h.api.texts(CHAT) == [said]  # nothing else: the model was not asked
        assert backend.requests == []


async def test_a_kill_under_a_memory_limit_below_the_cap_says_to_lower_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where the process's memory limit (its cgroup) is not above documents.max_memory_mb, the
    kernel ends the reader of such a file every time: the user is asked again and again, and
    the log line is where the operator learns why (the cgroup limit is the seam here)."""
    monkeypatch.setattr(documents, "memory_limit", lambda: 512 * 2**20)
    backend = ScriptedBackend(lambda request: "Monday.")
    async with telegram_harness(tmp_path, backend) as h:
        h.api.files["doc-1"] = NOTES.encode()
        monkeypatch.setattr(documents, "read_in_child", _killed_by_the_kernel)
        await h.adapter.handle_update(Update.de_json(_document("en"), h.adapter.bot))
        async with asyncio.timeout(WAIT_S):
            (said,) = await h.api.wait_for_messages(CHAT, 1)
        await h.idle()
    assert said == NOT_NOW["en"]
    assert ("documents.max_memory_mb, 1024, is not below this process's memory limit, "
            "512 MB: lower it") in caplog.text  # fmt: skip
