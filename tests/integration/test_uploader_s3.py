"""The uploader against real S3 servers: s3rver checks SigV2 signatures, moto stores and reads back.

They show what the spec's careful engineer warns about: on a server that checks signatures, the
renamed key and unsigned headers are refused (403, tried once, explained), while the key as signed,
signed headers and a presigned POST with a ``starts-with $key`` policy work.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest

from safegen.delivery import Uploader, expires_at
from safegen.egress import EgressPolicy
from safegen.errors import UploadTargetRejected
from tests.support.s3servers import S3Endpoint
from tests.support.uploads import make_uploader

pytestmark = pytest.mark.slow  # starts node (s3rver) and moto

BODY = bytes(range(256)) * 64  # 16 KiB of every byte value
MD5 = hashlib.md5(BODY).hexdigest()
LOOPBACK = EgressPolicy(allowed_schemes=("http",), allow_loopback=True)


async def never_sleep(delay: float) -> None:
    raise AssertionError(f"a retry was attempted (sleep {delay})")


@pytest.fixture
async def up() -> AsyncIterator[Uploader]:
    async with make_uploader(policy=LOOPBACK, sleep=never_sleep) as uploader:
        yield uploader


def all_users_can_read(s3: S3Endpoint, key: str) -> bool:
    acl = s3.client().get_object_acl(Bucket=s3.bucket, Key=key)
    return any(
        grant["Grantee"].get("URI", "").endswith("/global/AllUsers")
        and grant["Permission"] in ("READ", "FULL_CONTROL")
        for grant in acl["Grants"]
    )


async def test_s3rver_put_as_signed_succeeds_and_reads_back(
    s3rver: S3Endpoint, up: Uploader
) -> None:
    url = s3rver.presign_put("as-signed/1.png")
    result = await up.put(url, BODY)
    assert (result.ok, result.status, len(result.attempts)) == (True, 200, 1), result.reason
    assert result.etag == MD5
    assert s3rver.get("as-signed/1.png") == BODY
    async with httpx.AsyncClient() as client:  # s3rver serves objects without credentials
        assert (await client.get(s3rver.object_url("as-signed/1.png"))).content == BODY


async def test_s3rver_renamed_key_is_refused_once_with_reason(
    s3rver: S3Endpoint, up: Uploader
) -> None:
    # The spec's rename, written out: the file name replaced, the query kept byte for byte.
    url = s3rver.presign_put("renamed/1.png").replace("/renamed/1.png?", f"/renamed/{MD5}.jpg?")
    result = await up.put(url, BODY, renamed=True)
    assert (result.ok, result.status, len(result.attempts)) == (False, 403, 1)
    assert "SignatureDoesNotMatch" in result.reason
    assert "does not cover the renamed object key" in result.reason
    assert "as-signed" in result.reason
    assert "POST" in result.reason
    assert result.url == url


async def test_s3rver_unsigned_acl_header_is_refused(s3rver: S3Endpoint, up: Uploader) -> None:
    url = s3rver.presign_put("acl/unsigned.png")
    result = await up.put(url, BODY, {"x-amz-acl": "public-read"})
    assert (result.ok, result.status, len(result.attempts)) == (False, 403, 1)
    assert "x-amz-acl" in result.reason


async def test_s3rver_signed_acl_header_succeeds(s3rver: S3Endpoint, up: Uploader) -> None:
    url = s3rver.presign_put("acl/signed.png", params={"ACL": "public-read"})
    result = await up.put(url, BODY, {"x-amz-acl": "public-read"})
    assert result.ok, result.reason
    assert s3rver.get("acl/signed.png") == BODY


async def test_s3rver_sigv4_put_and_expiry(s3rver: S3Endpoint, up: Uploader) -> None:
    url = s3rver.presign_put("v4/1.png", v4=True, expires_s=900)
    expiry = expires_at(url)
    assert expiry is not None
    result = await up.put(url, BODY)
    assert result.ok, result.reason
    assert s3rver.get("v4/1.png") == BODY


async def test_s3rver_expired_url(s3rver: S3Endpoint) -> None:
    url = s3rver.presign_put("expired/1.png", expires_s=1)
    await asyncio.sleep(1.6)
    # Our own clock sees the expiry: nothing is sent and the check refuses it up front.
    async with make_uploader(policy=LOOPBACK, sleep=never_sleep) as up:
        with pytest.raises(UploadTargetRejected, match="expired"):
            await up.prepare(url)
        result = await up.put(url, BODY)
    assert (result.ok, result.status, result.attempts) == (False, 0, [])
    # With a clock running late the request goes out, and the server refuses it: not retried.
    late = make_uploader(policy=LOOPBACK, sleep=never_sleep, clock=lambda: 0.0)
    async with late:
        result = await late.put(url, BODY)
    assert (result.ok, result.status, len(result.attempts)) == (False, 403, 1)
    assert "AccessDenied" in result.reason


async def test_moto_renamed_key_put_succeeds_and_is_public(moto_s3: S3Endpoint) -> None:
    # moto checks no signature, like a gateway that signs a prefix: the document's flow works.
    signed = moto_s3.presign_put("aiu-character/000/1.png")
    url = signed.replace("/aiu-character/000/1.png?", f"/aiu-character/000/{MD5}.jpg?")
    async with make_uploader(policy=LOOPBACK, sleep=never_sleep) as up:
        result = await up.put(url, BODY, {"x-amz-acl": "public-read"}, renamed=True)
    assert result.ok, result.reason
    assert result.status == 200
    assert result.url.split("?")[0].endswith(f"/aiu-character/000/{MD5}.jpg")
    key = f"aiu-character/000/{MD5}.jpg"
    assert moto_s3.get(key) == BODY
    assert all_users_can_read(moto_s3, key)
    async with httpx.AsyncClient() as client:
        assert (await client.get(moto_s3.object_url(key))).content == BODY


@pytest.mark.parametrize("public", [True, False])
async def test_moto_presigned_post_with_key_prefix(moto_s3: S3Endpoint, public: bool) -> None:
    prefix = f"post-{public}/000/"
    conditions: list[object] = [["starts-with", "$key", prefix]]
    fields = {}
    if public:
        conditions.append({"acl": "public-read"})
        fields["acl"] = "public-read"
    post = moto_s3.presign_post(prefix + "${filename}", conditions=conditions, fields=fields)
    key = f"{prefix}{MD5}.jpg"
    async with make_uploader(policy=LOOPBACK, sleep=never_sleep) as up:
        result = await up.post_form(post["url"], post["fields"], key, BODY, f"{MD5}.jpg")
    assert result.ok, result.reason
    assert result.status in (200, 201, 204)
    assert result.url == moto_s3.object_url(key)
    assert moto_s3.get(key) == BODY
    assert all_users_can_read(moto_s3, key) is public
