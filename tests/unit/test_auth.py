"""API-key authentication: key formats, header forms, the 401 contract, the default policy."""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI, Request

from safegen.api import auth as auth_module
from safegen.api.auth import (
    ApiKeyAuth,
    AuthError,
    announce_generated_key,
    key_digest,
    require_api_key,
    resolve_auth,
)

PLAIN_KEY = "plain-key-0123456789abcdef"
HASHED_KEY = "hashed-key-fedcba9876543210"
OTHER_KEY = "other-key-5555555555555555"
MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"


def sha256_hex(key: str) -> str:
    """The README's ``sha256:<hex>`` digest, computed here, independently of the code under test."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def make_app(auth: ApiKeyAuth | None, *, set_state: bool = True) -> FastAPI:
    app = FastAPI()
    if set_state:
        app.state.auth = auth

    @app.post("/v1/classify", dependencies=[Depends(require_api_key)])
    async def classify(request: Request) -> dict[str, str | None]:
        return {"key_id": request.state.key_id}

    @app.post("/generate")
    async def generate(key_id: str | None = Depends(require_api_key)) -> dict[str, str | None]:
        return {"key_id": key_id}

    @app.get("/healthz")
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    return app


@pytest.fixture
def auth() -> ApiKeyAuth:
    return ApiKeyAuth([PLAIN_KEY, f"sha256:{sha256_hex(HASHED_KEY)}"])


@pytest.fixture
async def client(auth: ApiKeyAuth) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(auth))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.mark.parametrize("path", ["/v1/classify", "/generate"])
async def test_missing_key_is_401_with_bearer_challenge(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    # The message says how to send a key (this app has no error handlers: FastAPI's detail).
    assert response.json()["detail"] == {"code": "unauthorized", "message": MISSING_KEY}


@pytest.mark.parametrize(
    ("headers", "message"),
    [({"Authorization": f"Bearer {OTHER_KEY}"}, "invalid API key"),
     ({"X-API-Key": OTHER_KEY}, "invalid API key"), ({"X-API-Key": ""}, MISSING_KEY)],
)
async def test_wrong_key_is_401(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    response = await client.post("/v1/classify", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["detail"] == {"code": "unauthorized", "message": message}
    assert OTHER_KEY not in response.text


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_any_casing(client: httpx.AsyncClient, scheme: str) -> None:
    response = await client.post("/v1/classify", headers={"Authorization": f"{scheme} {PLAIN_KEY}"})
    assert response.status_code == 200
    assert response.json() == {"key_id": sha256_hex(PLAIN_KEY)[:12]}


@pytest.mark.parametrize("path", ["/v1/classify", "/generate"])
async def test_x_api_key_header(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, headers={"X-API-Key": PLAIN_KEY})
    assert response.status_code == 200
    assert response.json() == {"key_id": sha256_hex(PLAIN_KEY)[:12]}


async def test_sha256_configured_key(client: httpx.AsyncClient) -> None:
    ok = await client.post("/v1/classify", headers={"Authorization": f"Bearer {HASHED_KEY}"})
    assert ok.status_code == 200
    # Knowing the configured digest is not knowing the key.
    digest_as_key = await client.post(
        "/v1/classify", headers={"X-API-Key": f"sha256:{sha256_hex(HASHED_KEY)}"}
    )
    assert digest_as_key.status_code == 401


async def test_other_schemes_are_ignored(client: httpx.AsyncClient) -> None:
    basic = await client.post("/v1/classify", headers={"Authorization": f"Basic {PLAIN_KEY}"})
    assert basic.status_code == 401
    with_header = await client.post(
        "/v1/classify", headers={"Authorization": "Basic Zm9vOmJhcg==", "X-API-Key": PLAIN_KEY}
    )
    assert with_header.status_code == 200


async def test_health_is_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200


async def test_auth_disabled_explicitly() -> None:
    transport = httpx.ASGITransport(app=make_app(None))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        response = await c.post("/v1/classify")
    assert response.status_code == 200
    assert response.json() == {"key_id": None}


async def test_unset_auth_state_fails_closed() -> None:
    transport = httpx.ASGITransport(app=make_app(None, set_state=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        with pytest.raises(RuntimeError, match="app.state.auth"):
            await c.post("/v1/classify")


def test_every_digest_is_compared_without_early_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", spy)
    auth = ApiKeyAuth([PLAIN_KEY, HASHED_KEY, OTHER_KEY])
    # The first configured key matches, yet all three digests are compared.
    assert auth.authenticate({"x-api-key": PLAIN_KEY}) == sha256_hex(PLAIN_KEY)[:12]
    assert len(calls) == 3
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in calls)
    calls.clear()
    with pytest.raises(AuthError):
        auth.authenticate({"x-api-key": "not-a-configured-key-at-all"})
    assert len(calls) == 3


def test_key_digest_is_sha256_hex() -> None:
    # The digest an operator computes with ``sha256sum`` (FIPS 180-2's "abc" test vector).
    assert key_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert key_digest(PLAIN_KEY) == sha256_hex(PLAIN_KEY)


def test_only_digests_are_stored() -> None:
    auth = ApiKeyAuth([PLAIN_KEY])
    dump = repr(vars(auth)) + repr(auth)
    assert PLAIN_KEY not in dump
    assert sha256_hex(PLAIN_KEY) not in repr(auth)


def test_plain_and_hashed_forms_give_the_same_id() -> None:
    plain = ApiKeyAuth([PLAIN_KEY]).authenticate({"authorization": f"Bearer {PLAIN_KEY}"})
    hashed = ApiKeyAuth([f"SHA256:{sha256_hex(PLAIN_KEY).upper()}"]).authenticate(
        {"x-api-key": PLAIN_KEY}
    )
    assert plain == hashed == sha256_hex(PLAIN_KEY)[:12]
    other = ApiKeyAuth([OTHER_KEY]).authenticate({"x-api-key": OTHER_KEY})
    assert other != plain


def test_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(
        "# service keys\n"
        "\n"
        f"{PLAIN_KEY}\n"
        f"   sha256:{sha256_hex(HASHED_KEY)}   # alice\n"
        "  # indented comment\n"
    )
    auth = ApiKeyAuth([], keys_file)
    assert len(auth) == 2
    assert auth.authenticate({"x-api-key": PLAIN_KEY})
    assert auth.authenticate({"x-api-key": HASHED_KEY})
    with pytest.raises(AuthError):
        auth.authenticate({"x-api-key": OTHER_KEY})
    combined = ApiKeyAuth([OTHER_KEY], keys_file)
    assert len(combined) == 3


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("short", "at least 16"),
        ("sha256:abc123", "64 hex"),
        (f"sha256:{'g' * 64}", "64 hex"),
        ("has space in the middle", "whitespace"),
        ("   ", "non-empty"),
    ],
)
def test_invalid_entries_are_refused_without_echoing_them(entry: str, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        ApiKeyAuth([PLAIN_KEY, entry])
    assert "#2" in str(info.value)
    if entry.strip():
        assert entry not in str(info.value)


def test_keys_file_errors_name_the_line(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"{PLAIN_KEY}\n{OTHER_KEY} trailing-text\n")
    with pytest.raises(ValueError, match="line 2: text after the key"):
        ApiKeyAuth([], keys_file)
    keys_file.write_text(f"{PLAIN_KEY}\nshort\n")
    with pytest.raises(ValueError, match="at least 16") as short:
        ApiKeyAuth([], keys_file)
    assert str(short.value) == (  # what the operator reads, with the way out
        f"API keys file {keys_file}, line 2: an API key must have at least 16 characters "
        "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    with pytest.raises(ValueError, match=r"cannot be read \(FileNotFoundError\)"):
        ApiKeyAuth([], tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="^no API keys configured$"):
        ApiKeyAuth([], tmp_path / "empty.txt")


def test_resolve_auth_generates_a_key_when_none_configured() -> None:
    auth, generated = resolve_auth([], None, no_auth=False)
    assert auth is not None
    assert generated is not None
    assert len(generated) >= 32
    assert auth.authenticate({"authorization": f"Bearer {generated}"})
    _, second = resolve_auth([], None, no_auth=False)
    assert second != generated


def test_resolve_auth_with_keys_and_no_auth(tmp_path: Path) -> None:
    auth, generated = resolve_auth([PLAIN_KEY], None, no_auth=False)
    assert generated is None
    assert auth is not None
    assert auth.authenticate({"x-api-key": PLAIN_KEY})
    assert resolve_auth([], None, no_auth=True) == (None, None)
    with pytest.raises(ValueError, match="no_auth"):
        resolve_auth([PLAIN_KEY], None, no_auth=True)
    keys_file = tmp_path / "k"
    keys_file.write_text(PLAIN_KEY + "\n")
    with pytest.raises(ValueError, match="no_auth"):
        resolve_auth([], keys_file, no_auth=True)
    # Keys in the settings and in a file both count.
    file_auth, generated = resolve_auth(["other-key-1234567890"], keys_file, no_auth=False)
    assert generated is None
    assert file_auth is not None
    assert file_auth.authenticate({"x-api-key": PLAIN_KEY})
    assert file_auth.authenticate({"x-api-key": "other-key-1234567890"})


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_generated_key_is_printed_on_a_terminal_never_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, generated = resolve_auth([], None, no_auth=False)
    assert generated is not None
    stream = Terminal()
    with caplog.at_level(logging.DEBUG):
        assert announce_generated_key(generated, stream) is None
    # The banner is the operator's only copy of the key: it says how to send it and how to keep
    # a stable one instead, in these words.
    assert stream.getvalue() == (
        "\nsafegen: no API key configured (SAFEGEN_API_KEYS / SAFEGEN_API_KEYS_FILE), so one was\n"
        "generated for this process only. Send it as 'Authorization: Bearer <key>':\n\n"
        f"    {generated}\n\n"
        "Configure your own key (or its 'sha256:<hex>' digest) to keep a stable one.\n\n"
    )
    assert [record.getMessage() for record in caplog.records] == [
        "no API key configured: a temporary key was generated and printed"
    ]


def test_generated_key_off_a_terminal_goes_to_a_private_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Off a terminal stderr carries the JSON log lines to a collector: the key must not be there.
    _, generated = resolve_auth([], None, no_auth=False)
    assert generated is not None
    stream = io.StringIO()
    with caplog.at_level(logging.DEBUG):
        path = announce_generated_key(generated, stream, key_dir=tmp_path)
    assert stream.getvalue() == ""
    assert path is not None
    assert path.parent == tmp_path
    assert path.read_text().strip() == generated
    assert path.stat().st_mode & 0o777 == 0o600
    # The log line says where the key is and how to keep a stable one, never the key.
    assert [record.getMessage() for record in caplog.records] == [
        f"no API key configured: a temporary key was generated and written to {path} (mode 600; "
        "configure SAFEGEN_API_KEYS or SAFEGEN_API_KEYS_FILE to keep a stable one)"
    ]
    assert generated not in caplog.text


FOREIGN_GROUP = 54_321  # a group this process is not in


@pytest.mark.parametrize(
    ("mode", "foreign_group", "warned"),
    [(0o600, False, False), (0o400, False, False), (0o640, False, False),
     (0o440, True, True), (0o644, False, True), (0o604, False, True),
     # execute bits and a foreign group without the read bit are not a leak
     (0o601, True, False), (0o610, True, False), (0o600, True, False)],
)
def test_keys_file_readable_by_other_users_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, foreign_group: bool,
    warned: bool,
) -> None:
    # Group-readable is fine for the process's own group (how Kubernetes mounts a Secret with
    # fsGroup); readable by a group it is not in, or by everyone, is a leak.
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(PLAIN_KEY + "\n")
    keys_file.chmod(mode)
    if foreign_group:
        if os.getuid() != 0:
            pytest.skip("changing a file's group to a foreign one needs root")
        os.chown(keys_file, -1, FOREIGN_GROUP)
    with caplog.at_level(logging.WARNING):
        ApiKeyAuth([], keys_file)
    warnings = [r.getMessage() for r in caplog.records if "chmod 600" in r.getMessage()]
    group = keys_file.stat().st_gid
    expected = (f"API keys file {keys_file} can be read by other users (mode {mode:03o}, group "
                f"{group}): `chmod 600` it, or keep only sha256: digests in it")
    assert warnings == ([expected] if warned else [])
