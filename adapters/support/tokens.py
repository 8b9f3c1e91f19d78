"""Visitor tokens: who a browser is, signed so that nobody can claim another visitor.

    token = base64url(JSON {"s": site id, "k": site key's fingerprint, "v": visitor id,
                            "e": expiry, unix s})
            + "." + base64url(HMAC-SHA256(secret, first part))

The token binds the site and the visitor: a request with it reads and writes that visitor's
conversation on that site and no other. The site is named by its id and by a fingerprint of
its public key, which no other site ever has: on SQLite a removed site's id is given to the
next site added, and its visitors' tokens must not work there (`VisitorClaim.belongs_to`).
The secret is `support.token_secret`, or when unset a random one generated once and kept in
Parley's data folder (readable by its owner only).
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from bot.errors import AdapterError, ConfigError
from bot.settings import data_dir

SECRET_FILE = "support-token-secret"
# An HMAC key shorter than its hash's 32 bytes is weaker than it need be (a one-letter key can
# be guessed); `openssl rand -base64 48` makes 64 characters.
TOKEN_SECRET_MIN = 32
VISITOR_PREFIX = "v_"
# What os.link answers on a file system without hard links.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS})


class BadToken(Exception):
    """Not a token of ours: malformed, signed with another secret, or expired."""


@dataclass(frozen=True, slots=True)
class VisitorClaim:
    site_id: int
    visitor_id: str
    expires_at: int
    # key_fingerprint(site's public key); "" in a token issued before tokens carried it.
    site_key: str = ""

    def belongs_to(self, site_id: int, public_key: str) -> bool:
        """Whether the token is this site's: its id and, where the token names one, its key
        (a token from before keys were named is checked by the id alone until it expires)."""
        if self.site_id != site_id:
            return False
        return not self.site_key or hmac.compare_digest(self.site_key, key_fingerprint(public_key))


def key_fingerprint(public_key: str) -> str:
    """A short name of a site's public key, unique to the site (the key is random)."""
    return hashlib.sha256(public_key.encode()).hexdigest()[:16]


def new_visitor_id() -> str:
    return VISITOR_PREFIX + secrets.token_urlsafe(16)


def load_secret(configured: SecretStr | None, folder: Path | None = None) -> bytes:
    """The configured secret, else the one kept in the data folder (made on first use). A
    kept one shorter than a configured one may be (an empty file an older version left when
    its write failed) is refused: an empty key signs tokens anyone can make."""
    if configured is not None:
        return configured.get_secret_value().encode()
    path = (folder or data_dir()) / SECRET_FILE
    if not path.exists():
        _make_secret(path)
    kept = path.read_text().strip()
    if len(kept) < TOKEN_SECRET_MIN:
        raise ConfigError(
            f"support: the token secret kept in {path} is {'too short' if kept else 'empty'} "
            "(a start that could not write it); delete the file (visitors then get new "
            "tokens) or set support.token_secret"
        )
    return kept.encode()


def _make_secret(path: Path) -> None:
    """A new secret, written whole under another name and then linked in place: a write that
    fails (a full disk) or a crash leaves no empty secret behind, and of two workers
    starting together the second's link fails and it reads the first's whole secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd, draft = tempfile.mkstemp(prefix=f".{SECRET_FILE}-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _write_new(path, secret)
    except OSError as exc:
        raise AdapterError(
            f"support: cannot write the token secret to {path} ({exc.strerror}); "
            "free some room there or set support.token_secret"
        ) from None
    finally:
        os.unlink(draft)


def _write_new(path: Path, secret: str) -> None:
    """A file system without hard links (Azure Files, gcsfuse, s3fs, vfat): the secret is
    written into a file created only if there is none (O_EXCL: of two workers starting
    together one writes it), and removed if the write fails. A worker reading it in the
    moment it is still empty refuses it (load_secret) rather than sign with an empty key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)
    except OSError:
        path.unlink(missing_ok=True)
        raise


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self._ttl_s = ttl_s

    def issue(self, site_id: int, public_key: str, visitor_id: str) -> tuple[str, VisitorClaim]:
        expires = int(time.time()) + self._ttl_s
        claim = VisitorClaim(site_id, visitor_id, expires, key_fingerprint(public_key))
        fields = {"s": site_id, "k": claim.site_key, "v": visitor_id, "e": expires}
        body = _b64(json.dumps(fields).encode())
        return f"{body}.{self._sign(body)}", claim

    def verify(self, token: str, *, allow_expired: bool = False) -> VisitorClaim:
        """The claim of a token we signed; BadToken otherwise. `allow_expired`: for renewing
        (the signature still proves who the visitor was), up to one more `ttl_s` after it
        expired: a token that leaked does not renew itself for ever."""
        body, dot, signature = token.partition(".")
        # Bytes: compare_digest refuses str with non-ASCII characters (any input may have them).
        if not dot or not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise BadToken("the token is not valid")
        try:
            data = json.loads(_unb64(body))
            claim = VisitorClaim(
                int(data["s"]), str(data["v"]), int(data["e"]), str(data.get("k", ""))
            )
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise BadToken("the token is not valid") from None
        now = time.time()
        if claim.expires_at < now and not allow_expired:
            raise BadToken("the token has expired; ask for a new one at POST /v1/visitors")
        if claim.expires_at + self._ttl_s < now:
            raise BadToken("the token expired too long ago to be renewed; start a new visitor")
        return claim

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())
