"""/generate's delivery modes on real S3-compatible servers, and the upload metrics they leave."""

from __future__ import annotations

import hashlib
import ipaddress
import re

import pytest

from safegen.egress.resolver import SystemResolver
from tests.integration.test_uploader import POLICY
from tests.integration.test_uploader_s3 import all_users_can_read
from tests.support.app_client import SMALL
from tests.support.faultserver import Step


async def test_signed_public_read_acl_succeeds_and_unsigned_is_refused(
    make_generate_client, s3rver
):
    signed = s3rver.presign_put("acl/signed.jpg", params={"ACL": "public-read"})
    unsigned = s3rver.presign_put("acl/unsigned.jpg")
    headers = {"x-amz-acl": "public-read"}
    async with make_generate_client() as client:
        ok = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": signed, "upload_mode": "as_signed",
            "upload_headers": headers, **SMALL,
        })
        refused = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": unsigned, "upload_mode": "as_signed",
            "upload_headers": headers, **SMALL,
        })
    assert ok.status_code == 200, ok.text
    assert refused.status_code == 502
    assert refused.json()["data"]["s3_upload_status"] == 403


async def test_expired_presigned_url_is_refused_before_generation(
    make_generate_client, s3rver
):
    expired = s3rver.presign_put("old/1.png", expires_s=-10)
    async with make_generate_client() as client:
        response = await client.post("/generate", json={"prompt": "x", "s3_prefix": expired,
                                                         **SMALL})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 422
    assert "expired" in response.json()["error"]["message"]
    assert '\nsafegen_generations_total{outcome="generated"} 0.0\n' in metrics  # none generated


@pytest.mark.parametrize(
    ("public", "key_field"),
    [(True, "${filename}"), (False, "${filename}"), (False, "")],
    ids=["public-filename-variable", "private-filename-variable", "private-plain-prefix"],
)
async def test_presigned_post_stores_prefix_plus_md5(
    make_generate_client, moto_s3, public, key_field
):
    """The policy's ``key`` field is the prefix, ending in ``${filename}`` or not."""
    prefix = f"gen-post-{public}-{bool(key_field)}/000/"
    conditions: list[object] = [["starts-with", "$key", prefix]]
    fields = {"acl": "public-read"} if public else {}
    if public:
        conditions.append({"acl": "public-read"})
    post = moto_s3.presign_post(prefix + key_field, conditions=conditions, fields=fields)
    async with make_generate_client() as client:
        response = await client.post("/generate", json={
            "prompt": "x", "s3_prefix": post["url"], "upload_mode": "post",
            "s3_post_fields": post["fields"], **SMALL,
        })
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    key = f"{prefix}{data['image_hash']}.jpg"
    assert data["s3_url"] == moto_s3.object_url(key)
    assert hashlib.md5(moto_s3.get(key)).hexdigest() == data["image_hash"]
    assert all_users_can_read(moto_s3, key) is public


async def test_metrics_count_a_mixed_run_of_uploads(
    make_generate_client, moto_s3, s3rver, fault_server
):
    fault_server.script(Step(500), Step(200))
    targets = [
        moto_s3.presign_put("mixed/1.png"),  # success
        moto_s3.presign_put("mixed/2.png"),  # success
        s3rver.presign_put("mixed/3.png"),  # 403: renamed key, final
        f"{fault_server.url}/b/4.png",  # 500 then 200: one retry
    ]
    async with make_generate_client() as client:
        statuses = [
            (await client.post("/generate", json={"prompt": "x", "s3_prefix": t, **SMALL}))
            .status_code for t in targets
        ]
        metrics = (await client.get("/metrics")).text
    assert statuses == [200, 200, 502, 200]
    expected = {
        'safegen_uploads_total{result="success"}': 3,
        'safegen_uploads_total{result="failure"}': 1,
        'safegen_upload_attempts_total{status_class="2xx"}': 3,
        'safegen_upload_attempts_total{status_class="4xx"}': 1,
        'safegen_upload_attempts_total{status_class="5xx"}': 1,
        "safegen_upload_retries_total": 1,
        "safegen_upload_duration_seconds_count": 4,
    }
    for series, count in expected.items():
        match = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
        assert match, series
        assert float(match.group(1)) == count, series


@pytest.mark.parametrize("mode", ["put", "post"])
async def test_the_upload_goes_to_the_address_checked_at_admission(
    make_generate_client, fault_server, monkeypatch, mode
):
    """The storage host is looked up once, when /generate admits the request: a DNS server that
    answers a link-local address to any later lookup (rebinding) cannot redirect the upload."""
    lookups: list[str] = []

    async def rebinding(self: SystemResolver, host: str, port: int) -> list[object]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1" if len(lookups) == 1 else "169.254.169.254")]

    monkeypatch.setattr(SystemResolver, "__call__", rebinding)
    prefix = f"http://storage.test:{fault_server.port}/bucket/gen/"
    body: dict[str, object] = {"prompt": "x", "s3_prefix": prefix, **SMALL}
    if mode == "post":
        body |= {"s3_prefix": prefix.removesuffix("gen/"), "upload_mode": "post",
                 "s3_post_fields": {"key": "gen/${filename}", "policy": POLICY}}
    async with make_generate_client() as client:
        response = await client.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert lookups == ["storage.test"]
    assert len(fault_server.requests) == 1
