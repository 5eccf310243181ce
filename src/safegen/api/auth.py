"""API-key authentication for the HTTP edge.

Keys are configured either in plaintext or as ``sha256:<64 hex>`` (the SHA-256 hex digest of the
key), so an operator never has to put a plaintext key in the environment. Only digests are kept in
memory. A presented key is hashed and compared with ``hmac.compare_digest`` against *every*
configured digest, without an early exit, so timing says nothing about which key (if any) matched.

Secure by default: :func:`resolve_auth` refuses to run open unless ``no_auth`` is set explicitly;
with no key configured it generates one, which the caller hands to the operator once, on a terminal
or in a file only they can read, never in the log (see :func:`announce_generated_key`). Keys are
never logged; the identity used for rate limiting and logs is a key id, the first 12 hex digits of
the key's digest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TextIO

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPBearer

logger = logging.getLogger(__name__)

MIN_KEY_LENGTH = 16
KEY_ID_LENGTH = 12
_DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})", re.IGNORECASE)
# RFC 6750 section 3.1: no error code when credentials are absent; invalid_token when wrong.
CHALLENGE_MISSING = "Bearer"
CHALLENGE_INVALID = 'Bearer error="invalid_token"'


class AuthError(Exception):
    """Missing or wrong credentials; ``www_authenticate`` is the challenge to send with the 401."""

    def __init__(self, message: str, *, www_authenticate: str = CHALLENGE_MISSING) -> None:
        super().__init__(message)
        self.message = message
        self.www_authenticate = www_authenticate


def key_digest(key: str) -> str:
    """SHA-256 hex digest of ``key``; configure it as ``sha256:<digest>``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _parse_entry(entry: str, where: str) -> str:
    """One configured entry -> its digest. Error messages name the entry, never its value."""
    entry = entry.strip()
    if entry.lower().startswith("sha256:"):
        match = _DIGEST_RE.fullmatch(entry)
        if match is None:
            raise ValueError(f"{where}: 'sha256:' must be followed by exactly 64 hex digits")
        return match.group(1).lower()
    if not entry or any(ch.isspace() for ch in entry):
        raise ValueError(f"{where}: an API key must be non-empty and contain no whitespace")
    if len(entry) < MIN_KEY_LENGTH:
        raise ValueError(
            f"{where}: an API key must have at least {MIN_KEY_LENGTH} characters "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return key_digest(entry)


def _read_keys_file(path: Path) -> list[str]:
    """Digests from a keys file: one key or ``sha256:`` digest a line, ``#`` starts a comment."""
    try:
        text = path.read_text(encoding="utf-8")
        status = path.stat()
    except OSError as exc:
        raise ValueError(f"API keys file {path} cannot be read ({type(exc).__name__})") from None
    if _readable_by_others(status):
        logger.warning(
            "API keys file %s can be read by other users (mode %03o, group %d): `chmod 600` "
            "it, or keep only sha256: digests in it", path, status.st_mode & 0o777, status.st_gid,
        )
    digests = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split(None, 1)
        if rest and not rest[0].startswith("#"):
            raise ValueError(f"API keys file {path}, line {number}: text after the key")
        digests.append(_parse_entry(key, f"API keys file {path}, line {number}"))
    return digests


def _readable_by_others(status: os.stat_result) -> bool:
    """Readable by anyone but this process's user and groups. A group this process belongs to
    is how orchestrators grant it a secret (Kubernetes' fsGroup, mode 0440): not a leak."""
    if status.st_mode & 0o004:
        return True
    own_groups = {os.getgid(), *os.getgroups()}
    return bool(status.st_mode & 0o040) and status.st_gid not in own_groups


class ApiKeyAuth:
    """Checks presented API keys against configured digests in constant time."""

    def __init__(self, keys: Iterable[str], keys_file: Path | None = None) -> None:
        digests = [_parse_entry(k, f"API key #{i}") for i, k in enumerate(keys, start=1)]
        if keys_file is not None:
            digests.extend(_read_keys_file(Path(keys_file)))
        if not digests:
            raise ValueError("no API keys configured")
        # bytes, deduplicated, in a fixed order: compare_digest wants equal-type operands.
        self._digests: tuple[bytes, ...] = tuple(d.encode("ascii") for d in dict.fromkeys(digests))

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:  # never show digests, even partially
        return f"ApiKeyAuth(<{len(self._digests)} keys>)"

    @staticmethod
    def credentials(headers: Mapping[str, str]) -> str | None:
        """The key presented as ``Authorization: Bearer <key>`` (any casing) or ``X-API-Key``."""
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        api_key = headers.get("x-api-key")
        if api_key and api_key.strip():
            return api_key.strip()
        return None

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """Return the key id of a valid key in ``headers``; raise :class:`AuthError` otherwise."""
        key = self.credentials(headers)
        if key is None:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'")
        candidate = key_digest(key).encode("ascii")
        matched = False
        for digest in self._digests:  # no early exit: every digest is compared
            matched |= hmac.compare_digest(digest, candidate)
        if not matched:
            raise AuthError("invalid API key", www_authenticate=CHALLENGE_INVALID)
        return candidate[:KEY_ID_LENGTH].decode("ascii")


def resolve_auth(
    keys: Iterable[str], keys_file: Path | None, no_auth: bool
) -> tuple[ApiKeyAuth | None, str | None]:
    """Apply the secure-by-default policy; return ``(auth, generated_key)``.

    - ``no_auth`` set: ``(None, None)``, authentication off (refused if keys are configured too,
      since that contradiction is most likely a mistake).
    - keys or a keys file configured: ``(ApiKeyAuth(...), None)``.
    - nothing configured: a random key is generated and returned as ``generated_key``. The caller
      must hand it over with :func:`announce_generated_key` and never log it; it lives only as
      long as the process.
    """
    keys = list(keys)
    if no_auth:
        if keys or keys_file is not None:
            raise ValueError("no_auth is set but API keys are configured too; choose one")
        logger.warning("authentication is DISABLED (no_auth); every client has full access")
        return None, None
    if keys or keys_file is not None:
        return ApiKeyAuth(keys, keys_file), None
    generated = secrets.token_urlsafe(32)
    return ApiKeyAuth([generated]), generated


def announce_generated_key(
    key: str, stream: TextIO | None = None, key_dir: Path | None = None
) -> Path | None:
    """Hand a generated key to the operator once, never through the log.

    On a terminal it is printed. Otherwise stderr is most likely collected with the JSON log
    lines (a container, a service manager), so the key goes to a new file readable by this user
    only, in ``key_dir`` (default: the temporary directory), and the log says where. Returns that
    file, or ``None`` when printed.
    """
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        stream.write(
            "\nsafegen: no API key configured (SAFEGEN_API_KEYS / SAFEGEN_API_KEYS_FILE), so one "
            "was\ngenerated for this process only. Send it as 'Authorization: Bearer <key>':\n\n"
            f"    {key}\n\n"
            "Configure your own key (or its 'sha256:<hex>' digest) to keep a stable one.\n\n"
        )
        stream.flush()
        logger.warning("no API key configured: a temporary key was generated and printed")
        return None
    directory = key_dir if key_dir is not None else Path(tempfile.gettempdir())
    path = directory / f"safegen-api-key-{os.getpid()}-{secrets.token_hex(4)}"
    # O_EXCL: never write through a file or link someone else placed there.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(key + "\n")
    logger.warning(
        "no API key configured: a temporary key was generated and written to %s (mode 600; "
        "configure SAFEGEN_API_KEYS or SAFEGEN_API_KEYS_FILE to keep a stable one)", path,
    )
    return path


# Declared for the OpenAPI schema only (the "Authorize" button); parsing is done by ApiKeyAuth.
_bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearer")
_header_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")


async def require_api_key(
    request: Request,
    _bearer: object = Security(_bearer_scheme),
    _header: object = Security(_header_scheme),
) -> str | None:
    """FastAPI dependency: authenticate with ``request.app.state.auth``; 401 if that fails.

    ``app.state.auth`` must be set explicitly: an :class:`ApiKeyAuth`, or ``None`` to turn
    authentication off. The key id (``None`` when off) is stored on ``request.state.key_id``.
    """
    try:
        auth = request.app.state.auth
    except AttributeError:
        # Fail closed: a forgotten wiring step must not open the API.
        raise RuntimeError("app.state.auth is not set (ApiKeyAuth, or None to disable)") from None
    if auth is None:
        request.state.key_id = None
        return None
    try:
        key_id = auth.authenticate(request.headers)
    except AuthError as exc:
        raise HTTPException(
            status_code=401,
            detail={"code": "unauthorized", "message": exc.message},
            headers={"WWW-Authenticate": exc.www_authenticate},
        ) from None
    request.state.key_id = key_id
    return key_id
