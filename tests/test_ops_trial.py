"""An operator's trial of Parley's data folder: the support channel's token secret kept there
when `support.token_secret` is unset, on a disk that fills, after a crash, and with two
workers starting together."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from adapters.support.tokens import SECRET_FILE, TokenSigner, load_secret
from bot.errors import BotError
from bot.knowledge.embeddings import WordLlamaEmbedder

ROOT = Path(__file__).resolve().parents[1]

# In a process of its own: no file may grow past 16 bytes (RLIMIT_FSIZE; Python ignores
# SIGXFSZ, so the write fails with EFBIG), as on a disk with no room left for the secret.
_LOAD_ON_A_FULL_DISK = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from adapters.support.tokens import load_secret
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
    try:
        load_secret(None, Path(sys.argv[1]))
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
)


def test_a_secret_file_left_empty_is_refused_not_used(tmp_path: Path) -> None:
    """A start that died after creating the file and before writing it (a full disk, a
    kill), or a second worker reading it in that moment, signed every visitor token with an
    empty key, which anyone can compute: any visitor of any site could be claimed."""
    (tmp_path / SECRET_FILE).write_text("")
    with pytest.raises(BotError) as refused:
        TokenSigner(load_secret(None, tmp_path), ttl_s=60)
    assert str(tmp_path / SECRET_FILE) in str(refused.value)
    assert "support.token_secret" in str(refused.value)


def test_a_secret_that_cannot_be_written_leaves_no_file_behind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_ON_A_FULL_DISK, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # One line naming the file, not a bare "[Errno 27] File too large".
    assert str(tmp_path / SECRET_FILE) in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == []  # the next start makes a whole one
    made = load_secret(None, tmp_path)
    assert len(made) >= 32
    assert load_secret(None, tmp_path) == made  # kept: the same on every start


def test_a_secret_is_kept_in_a_data_folder_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The secret was linked in place, and a data folder on a file system without hard links
    (Azure Files, gcsfuse and s3fs mounts, vfat answer EPERM or ENOTSUP) stopped every start
    with "cannot write the token secret ... (Operation not permitted); free some room",
    where it was kept before. Such a folder still gets one whole secret, the same at every
    start, and no draft left beside it."""

    def no_hard_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    made = load_secret(None, tmp_path)
    assert len(made) >= 32
    assert load_secret(None, tmp_path) == made  # kept: the same on every start
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600


# In a process of its own: no file may grow past 64 bytes, as on a disk that filled while the
# embedding model's tokenizer was copied into the data folder.
_EMBED_ON_A_FULL_DISK = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from bot.knowledge.embeddings import WordLlamaEmbedder
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
    try:
        WordLlamaEmbedder(Path(sys.argv[1])).embed(["hello"])
    except Exception as exc:
        print(type(exc).__name__)
    """
)


def test_embeddings_come_back_after_a_disk_that_filled_while_they_were_set_up(
    tmp_path: Path,
) -> None:
    """The tokenizer file copied into the data folder was written in place: a disk that
    filled during the copy left it empty, every later start took it as copied, and semantic
    search was gone for good ("embeddings unavailable (EOF while parsing a value ...)", tried
    again every 30 s in vain) after the disk had room again."""
    models = tmp_path / "models"
    failed = subprocess.run(
        [sys.executable, "-c", _EMBED_ON_A_FULL_DISK, str(models)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 0 and failed.stdout.strip(), failed.stdout + failed.stderr
    vectors = WordLlamaEmbedder(models).embed(["hello", "world"])  # room again
    assert vectors.shape == (2, WordLlamaEmbedder(models).dim)


def test_the_copied_tokenizer_can_be_read_by_the_other_users_of_the_cache(
    tmp_path: Path,
) -> None:
    """The tokenizer file was copied with the mode of a plain file (0644 under the usual
    umask), then through a temporary file (mkstemp's 0600): a knowledge.embeddings_cache
    made by one user (a build step, an operator's `parley kb` run) and read by the service's
    user then gave "embeddings unavailable (Permission denied)" for good, the file being of
    the right size. The wheel's public file is readable by all again."""
    models = tmp_path / "models"
    WordLlamaEmbedder(models).embed(["hello"])
    copies = sorted(models.rglob("*tokenizer_config.json"))
    assert copies
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in copies), copies


# In a process of its own: no file may grow past 64 KiB, as in a temporary folder (/tmp, a
# container's small tmpfs) that is full.
_DETECT_WITH_A_FULL_TMP = textwrap.dedent(
    """
    import resource
    from bot.text.language import LanguageDetector
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
    try:
        LanguageDetector()
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
)


def test_a_full_temporary_folder_is_named_when_the_language_model_is_unpacked(
    tmp_path: Path,
) -> None:
    """py3langid unpacks its model into a temporary file at start: with /tmp full, `parley
    run` ended on a bare "[Errno 28] No space left on device" while the data folder and the
    database had room."""
    done = subprocess.run(
        [sys.executable, "-c", _DETECT_WITH_A_FULL_TMP],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BotError "), done.stdout
    assert f"in {tmp_path} " in done.stdout and "TMPDIR" in done.stdout, done.stdout
    assert list(tmp_path.iterdir()) == []
