"""The uploader against a scripted real HTTP server: retries, timeouts, drops, redirects, expiry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
import time
from email.parser import BytesParser
from email.policy import HTTP

import pytest

from safegen.delivery import Uploader, content_md5_header
from safegen.egress import EgressPolicy, IPAddress
from safegen.errors import TargetRejected, TooLarge, UploadTargetRejected
from tests.support.faultserver import FaultServer, Step
from tests.support.tlscerts import TestCA
from tests.support.uploads import make_uploader

BODY = b"\xff\xd8\xff\xe0 not really a jpeg \x00\x01" * 100
MD5 = hashlib.md5(BODY).hexdigest()
ACCESS_DENIED = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
SIGNATURE_MISMATCH = b"<Error><Code>SignatureDoesNotMatch</Code></Error>"
POLICY = base64.b64encode(b'{"expiration": "2099-01-01T00:00:00Z", "conditions": []}').decode()
QUERY = "?AWSAccessKeyId=AKIDSECRETID&Signature=SeCrEt%2Bsig%3D&Expires={expires}"


class FakeTime:
    """A wall clock that moves only when the uploader sleeps; records the delays asked for."""

    def __init__(self) -> None:
        self.now = time.time()
        self.sleeps: list[float] = []

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay

    def clock(self) -> float:
        return self.now


def url_for(server: FaultServer, expires_in: float = 3600, now: float | None = None) -> str:
    expires = int((now or time.time()) + expires_in)
    return f"{server.url}/bucket/000/1.png" + QUERY.format(expires=expires)


def uploader(fake: FakeTime | None = None, **config: object) -> Uploader:
    return make_uploader(fake, **config)


@pytest.mark.slow  # waits the real 1 s + 2 s backoff
async def test_500_500_200_succeeds_after_real_backoff(fault_server: FaultServer) -> None:
    fault_server.script(Step(500), Step(500), Step(200))
    async with uploader() as up:
        result = await up.put(url_for(fault_server), BODY)
    assert result.ok, result.reason
    assert [a.status for a in result.attempts] == [500, 500, 200]
    assert result.status == 200
    assert result.etag == MD5
    assert 2.99 <= result.elapsed_s < 5.0
    times = [r.at for r in fault_server.requests]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # Each gap is the backoff plus one request's latency (generous bounds for a busy machine).
    assert 0.99 <= gaps[0] < 1.8
    assert 1.99 <= gaps[1] < 2.8
    assert all(r.body == BODY for r in fault_server.requests)


async def test_put_sends_exact_url_no_content_type_and_original_host(
    fault_server: FaultServer,
) -> None:
    url = f"http://localhost:{fault_server.port}/b/x%2Fy/1.png?a=%2F&a=%2f&b=c+d&e=&Signature=s%3D"
    async with uploader() as up:
        result = await up.put(url, BODY)
    assert result.ok, result.reason
    assert result.url == url
    (request,) = fault_server.requests
    assert request.method == "PUT"
    assert request.target == "/b/x%2Fy/1.png?a=%2F&a=%2f&b=c+d&e=&Signature=s%3D"
    assert request.headers["host"] == f"localhost:{fault_server.port}"
    assert "content-type" not in request.headers
    assert "content-md5" not in request.headers
    assert request.headers["content-length"] == str(len(BODY))


async def test_caller_headers_are_sent(fault_server: FaultServer) -> None:
    headers = {"Content-MD5": content_md5_header(BODY), "x-amz-acl": "public-read"}
    async with uploader() as up:
        assert (await up.put(url_for(fault_server), BODY, headers)).ok
    sent = fault_server.requests[0].headers
    assert base64.b64decode(sent["content-md5"]) == hashlib.md5(BODY).digest()
    assert sent["x-amz-acl"] == "public-read"


async def test_403_is_tried_once_with_reason(fault_server: FaultServer) -> None:
    fake = FakeTime()
    error = b"<Error><Code>SignatureDoesNotMatch</Code><StringToSign>PUT...</StringToSign></Error>"
    fault_server.script(Step(403, body=error))
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server), BODY, renamed=True)
    assert not result.ok
    assert result.status == 403
    assert len(result.attempts) == 1
    assert len(fault_server.requests) == 1
    assert fake.sleeps == []
    assert "signature does not cover the renamed object key" in result.reason
    assert "StringToSign" not in result.reason


async def test_four_failures_give_the_last_status(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(500), Step(502), Step(504), Step(503))
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert not result.ok
    assert [a.status for a in result.attempts] == [500, 502, 504, 503]
    assert result.status == 503
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert "503" in result.reason


@pytest.mark.parametrize("status", [400, 404, 409, 413, 501])
async def test_other_client_errors_are_not_retried(fault_server: FaultServer, status: int) -> None:
    fake = FakeTime()
    fault_server.script(Step(status), Step(200))
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert (result.ok, result.status, len(result.attempts)) == (False, status, 1)


async def test_timeouts_are_retried_and_status_0_when_nothing_answers(
    fault_server: FaultServer,
) -> None:
    fake = FakeTime()
    fault_server.script(Step(delay_s=2.0))
    async with uploader(fake, io_timeout_s=0.2) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert not result.ok
    assert result.status == 0
    assert [a.error_kind for a in result.attempts] == ["read_timeout"] * 4
    assert all(a.status == 0 and 0.15 < a.elapsed_s < 1.0 for a in result.attempts)
    assert "read timeout" in result.reason


async def test_timeout_then_success(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(delay_s=2.0), Step(429), Step(200))
    async with uploader(fake, io_timeout_s=0.2) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert result.ok
    assert [(a.status, a.error_kind) for a in result.attempts] == [
        (0, "read_timeout"), (429, "http_status"), (200, None)
    ]


async def test_dropped_connections_are_retried(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(drop=True), Step(drop=True), Step(201))
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert (result.ok, result.status) == (True, 201)
    assert [a.error_kind for a in result.attempts] == ["connection_dropped"] * 2 + [None]


async def test_refused_connection_gives_status_0(fault_server: FaultServer) -> None:
    fake = FakeTime()
    url = url_for(fault_server)
    fault_server.close()  # nothing listens on the port any more
    async with uploader(fake) as up:
        result = await up.put(url, BODY)
    assert (result.ok, result.status, len(result.attempts)) == (False, 0, 4)
    assert {a.error_kind for a in result.attempts} == {"connect_error"}


async def test_url_expiring_during_backoff_stops_retrying(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(503))
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server, expires_in=2.5, now=fake.now), BODY)
    # t=0: 503, sleep 1 -> t=1: 503; the next retry would be at t=3, after the URL expired.
    assert len(result.attempts) == 2
    assert fake.sleeps == [1.0]
    assert result.status == 503
    assert "before the next retry" in result.reason


async def test_expired_url_is_not_sent(fault_server: FaultServer) -> None:
    url = url_for(fault_server, expires_in=-5)
    async with uploader() as up:
        result = await up.put(url, BODY)
        with pytest.raises(UploadTargetRejected, match="expired"):
            await up.prepare(url)
    assert (result.ok, result.status, result.attempts) == (False, 0, [])
    assert "expired" in result.reason
    assert fault_server.requests == []


async def test_redirect_is_not_followed(fault_server: FaultServer) -> None:
    fault_server.script(Step(307, headers={"Location": f"{fault_server.url}/elsewhere"}))
    async with uploader() as up:
        result = await up.put(url_for(fault_server), BODY)
    assert (result.ok, result.status, len(result.attempts)) == (False, 307, 1)
    assert "redirect" in result.reason
    assert [r.target.split("?")[0] for r in fault_server.requests] == ["/bucket/000/1.png"]


async def test_retry_after_is_honoured_or_ends_retries(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(429, headers={"Retry-After": "3"}), Step(200))
    async with uploader(fake) as up:
        assert (await up.put(url_for(fault_server), BODY)).ok
        assert fake.sleeps == [3.0]  # longer than the 1 s backoff: the server's wish wins
        fault_server.script(Step(503, headers={"Retry-After": "120"}), Step(200))
        result = await up.put(url_for(fault_server), BODY)
    assert (result.ok, len(result.attempts)) == (False, 1)
    assert "asked to wait 120 s" in result.reason


async def test_etag_mismatch_is_a_failure(fault_server: FaultServer) -> None:
    fault_server.script(Step(200, headers={"ETag": '"' + "0" * 32 + '"'}))
    async with uploader(FakeTime()) as up:
        result = await up.put(url_for(fault_server), BODY)
        assert (result.ok, result.status, len(result.attempts)) == (False, 200, 1)
        assert result.attempts[0].error_kind == "etag_mismatch"
        assert "not the MD5" in result.reason
        # Multipart-style and missing ETags cannot be compared and are accepted.
        for headers in ({"ETag": '"abc-2"'}, {"ETag": ""}):
            fault_server.script(Step(200, headers=headers))
            assert (await up.put(url_for(fault_server), BODY)).ok


async def test_policy_rejection_and_size_limit_send_nothing(fault_server: FaultServer) -> None:
    async with uploader(max_body_bytes=10, policy=EgressPolicy()) as up:  # https, public only
        with pytest.raises(TargetRejected):
            await up.put(url_for(fault_server).replace("http://", "https://"), b"x")
        with pytest.raises(TooLarge, match="10 bytes"):
            await up.put(url_for(fault_server), BODY)
    assert fault_server.requests == []


async def test_logs_never_show_the_signature(
    fault_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    fault_server.script(Step(500), Step(403))
    caplog.set_level(logging.DEBUG, logger="safegen.delivery")
    async with uploader(FakeTime()) as up:
        await up.put(url_for(fault_server), BODY)
    assert "REDACTED" in caplog.text
    assert "SeCrEt" not in caplog.text
    assert "AKIDSECRETID" not in caplog.text
    # The uploader's own debug lines: each retry, then the outcome with what it took.
    lines = [r.getMessage() for r in caplog.records]
    assert re.fullmatch(r"upload retry in 1\.0s url=http://\S+REDACTED\S*", lines[0]), lines
    assert re.fullmatch(r"upload failed: status=403 attempts=2 elapsed=\d+\.\d\ds "
                        r"url=http://\S+REDACTED\S* reason=storage refused the upload \(HTTP "
                        r"403\): the URL's signature was not accepted", lines[-1]), lines
    caplog.clear()
    fault_server.script(Step(200))
    async with uploader(FakeTime()) as up:
        await up.put(url_for(fault_server), BODY)
    assert re.match(r"upload ok: status=200 attempts=1 elapsed=", caplog.records[-1].getMessage())


async def test_post_form_field_order(fault_server: FaultServer) -> None:
    fields = {"key": "ignored/${filename}", "policy": POLICY, "x-amz-signature": "s"}
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/bucket/", fields, "p/a b.jpg", BODY,
                                    "a b.jpg")
    assert result.ok
    assert result.url == f"{fault_server.url}/bucket/p/a%20b.jpg"
    parts = form_parts(fault_server.requests[0])
    assert [name for name, _ in parts] == ["policy", "x-amz-signature", "key", "file"]
    assert parts[2][1].get_content() == "p/a b.jpg"
    assert parts[3][1].get_payload(decode=True) == BODY


def form_parts(request) -> list[tuple[str, object]]:
    """The multipart form fields of a recorded POST, in order: (name, part)."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + request.body
    )
    return [(p.get_param("name", header="content-disposition"), p) for p in message.iter_parts()]


async def test_post_form_file_takes_the_policy_content_type_and_comes_once_last(
    fault_server: FaultServer,
) -> None:
    """S3 reads form fields up to ``file`` and ignores the rest: a ``file`` among the policy
    fields must not stand in for the image; the policy's Content-Type types the file part. The
    result URL is the POST URL (only trailing slashes trimmed; none here), a slash, the key."""
    fault_server.script(Step(204, headers={"ETag": f'"{MD5}"'}))
    fields = {"policy": POLICY, "Content-Type": "image/jpeg", "file": "not the image",
              "x-amz-signature": "s"}
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/uploads/BOX", fields, "k.jpg", BODY,
                                    "k.jpg")
    assert result.ok, result.reason  # the ETag is the MD5 of the file bytes: verified, matches
    assert result.url == f"{fault_server.url}/uploads/BOX/k.jpg"
    (request,) = fault_server.requests
    assert request.method == "POST"
    parts = form_parts(request)
    assert [name for name, _ in parts] == [
        "policy", "Content-Type", "x-amz-signature", "key", "file"
    ]
    file_part = parts[-1][1]
    assert file_part.get_content_type() == "image/jpeg"
    assert file_part.get_payload(decode=True) == BODY


async def test_post_form_etag_of_other_bytes_is_a_failure(fault_server: FaultServer) -> None:
    fault_server.script(Step(204, headers={"ETag": f'"{"0" * 32}"'}))
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/bucket/", {"policy": POLICY}, "k.jpg",
                                    BODY, "k.jpg")
    assert not result.ok
    assert result.reason is not None
    assert MD5 in result.reason  # names the MD5 of what was sent


async def test_post_form_signature_mismatch_names_the_signed_fields(
    fault_server: FaultServer,
) -> None:
    fault_server.script(Step(403, body=SIGNATURE_MISMATCH))
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/bucket/", {"policy": POLICY}, "k.jpg",
                                    BODY, "k.jpg")
    assert not result.ok
    assert result.reason is not None
    assert "must be exactly those the URL was signed with" in result.reason


@pytest.mark.parametrize(
    ("headers", "wording"),
    [({}, "the URL's signature was not accepted"),  # not renamed (the default), no headers
     ({"Content-Type": "image/jpeg"}, "must be exactly those the URL was signed with")],
)
async def test_403_signature_mismatch_of_a_put_names_what_it_can(
    fault_server: FaultServer, headers: dict[str, str], wording: str
) -> None:
    fault_server.script(Step(403, body=SIGNATURE_MISMATCH))
    async with uploader() as up:
        result = await up.put(url_for(fault_server), BODY, headers)
    assert result.reason is not None
    assert wording in result.reason
    assert "renamed" not in result.reason


async def test_a_prepared_target_is_looked_up_once(fault_server: FaultServer) -> None:
    """What :meth:`Uploader.prepare` resolved is where every upload goes: no second lookup
    (which a rebinding DNS server could answer with another address)."""
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    url = f"http://storage.test:{fault_server.port}/bucket/"
    async with make_uploader(resolver=resolver) as up:
        put = await up.put(await up.prepare(url + "1.jpg"), BODY)
        posted = await up.post_form(await up.prepare(url), {"policy": POLICY}, "2.jpg", BODY,
                                    "2.jpg")
    assert put.ok, put.reason
    assert posted.ok, posted.reason
    assert calls == ["storage.test", "storage.test"]  # one per prepare, none per upload


async def test_tls_connects_to_the_checked_address_and_verifies_the_name(
    tls_fault_server: FaultServer, test_ca: TestCA
) -> None:
    calls: list[str] = []

    async def resolver(host: str, port: int) -> list[IPAddress]:
        calls.append(host)
        # Rebinding: a second lookup would answer the metadata address; there must be none.
        return [ipaddress.ip_address("127.0.0.1" if len(calls) == 1 else "169.254.169.254")]

    tls_fault_server.script(Step(503), Step(200))
    async with make_uploader(FakeTime(), resolver=resolver, verify=test_ca.client_context()) as up:
        result = await up.put(url_for(tls_fault_server), BODY)
    assert result.ok, result.reason
    assert calls == ["storage.test"]
    assert tls_fault_server.requests[0].headers["host"] == f"storage.test:{tls_fault_server.port}"


async def test_tls_name_not_covered_by_the_certificate_fails_once(
    tls_fault_server: FaultServer, test_ca: TestCA
) -> None:
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    wrong = url_for(tls_fault_server).replace("storage.test", "other.test")
    async with make_uploader(resolver=resolver, verify=test_ca.client_context()) as up:
        result = await up.put(wrong, BODY)
    assert (result.ok, result.status, len(result.attempts)) == (False, 0, 1)
    assert result.attempts[0].error_kind == "tls_verification"
    assert "certificate" in result.reason
    assert tls_fault_server.requests == []


async def test_dns_failure_is_retried_then_the_address_is_kept(fault_server: FaultServer) -> None:
    answers: list[list[IPAddress]] = [[], [ipaddress.ip_address("127.0.0.1")]]

    async def flaky_resolver(host: str, port: int) -> list[IPAddress]:
        return answers.pop(0)  # a third lookup would raise IndexError and fail the test

    fake = FakeTime()
    fault_server.script(Step(500), Step(200))
    url = url_for(fault_server).replace("127.0.0.1", "storage.test")
    async with make_uploader(fake, resolver=flaky_resolver) as up:
        result = await up.put(url, BODY)
    assert result.ok, result.reason
    assert [(a.status, a.error_kind) for a in result.attempts] == [
        (0, "dns"), (500, "http_status"), (200, None)
    ]
    assert fake.sleeps == [1.0, 2.0]


async def test_a_host_that_never_resolves_says_so(fault_server: FaultServer) -> None:
    async def no_answer(host: str, port: int) -> list[IPAddress]:
        return []

    url = url_for(fault_server).replace("127.0.0.1", "storage.test")
    async with make_uploader(FakeTime(), resolver=no_answer, backoff_s=(1.0, 2.0)) as up:
        result = await up.put(url, BODY)
    assert not result.ok
    assert [(a.status, a.error_kind) for a in result.attempts] == [(0, "dns")] * 3
    assert result.reason == "the upload host could not be resolved (3 attempts)"
    assert fault_server.requests == []


async def test_a_header_httpx_cannot_send_fails_once_without_retrying(
    fault_server: FaultServer,
) -> None:
    fake = FakeTime()
    async with uploader(fake) as up:
        result = await up.put(url_for(fault_server), BODY, {"x-amz-meta-owner": "caf\u00e9"})
    assert not result.ok
    assert [(a.status, a.error_kind) for a in result.attempts] == [(0, "invalid_request")]
    assert result.reason == "the upload request could not be built: a header is not valid HTTP"
    assert fake.sleeps == []
    assert fault_server.requests == []


async def test_post_form_defaults_the_file_type_and_drops_the_query_from_the_result_url(
    fault_server: FaultServer,
) -> None:
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/bucket/?x-id=PostObject&next=a?b",
                                    {"policy": POLICY}, "k.jpg", BODY, "k.jpg")
    assert result.ok, result.reason
    assert result.url == f"{fault_server.url}/bucket/k.jpg"
    file_part = form_parts(fault_server.requests[0])[-1][1]
    assert file_part.get_content_type() == "application/octet-stream"


async def test_post_form_with_an_expired_policy_sends_nothing(fault_server: FaultServer) -> None:
    expired = base64.b64encode(b'{"expiration": "2001-01-01T00:00:00Z", "conditions": []}')
    async with uploader() as up:
        result = await up.post_form(f"{fault_server.url}/bucket/", {"policy": expired.decode()},
                                    "k.jpg", BODY, "k.jpg")
    assert not result.ok
    assert result.reason is not None
    assert "expired" in result.reason
    assert fault_server.requests == []


async def test_a_connection_verified_for_one_name_is_never_used_for_another(
    tls_fault_server: FaultServer, test_ca: TestCA
) -> None:
    # Both names resolve to the one address; the certificate covers storage.test only. A
    # connection pooled by address would carry other.test's request (and its signature) over
    # the storage.test connection without ever checking other.test's certificate.
    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    async with make_uploader(resolver=resolver, verify=test_ca.client_context()) as up:
        first = await up.put(url_for(tls_fault_server), BODY)
        assert first.ok, first.reason
        other = url_for(tls_fault_server).replace("storage.test", "other.test")
        second = await up.put(other, BODY)
    assert (second.ok, second.status) == (False, 0)
    assert [a.error_kind for a in second.attempts] == ["tls_verification"]
    assert [r.headers["host"].split(":")[0] for r in tls_fault_server.requests] == [
        "storage.test"
    ]


async def test_a_trickling_storage_is_cut_off_by_the_attempt_timeout(
    fault_server: FaultServer,
) -> None:
    # One byte every 0.2 s never trips a read timeout; only a deadline per attempt ends it.
    fault_server.script(Step(500, body=b"<Error>" + b" " * 10_000, trickle_s=0.2))
    async with uploader(FakeTime(), attempt_timeout_s=0.5, io_timeout_s=5,
                        backoff_s=(1.0,)) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert not result.ok
    assert [(a.status, a.error_kind) for a in result.attempts] == [(0, "attempt_timeout")] * 2
    assert result.status == 0  # no answer came
    assert all(0.5 <= a.elapsed_s < 60 for a in result.attempts)  # each ran to its timeout
    assert result.reason.endswith("within 0.5 s (SAFEGEN_UPLOAD_ATTEMPT_TIMEOUT_S)")


@pytest.mark.parametrize(
    "step",
    [Step(403, body=ACCESS_DENIED, trickle_s=0.001),  # the code arrives a byte at a time
     Step(403, body=ACCESS_DENIED + b" " * 200_000)],  # far past the bytes read for the code
    ids=["in-many-chunks", "long-body"],
)
async def test_the_s3_error_code_is_read_from_the_head_of_any_error_body(
    fault_server: FaultServer, step: Step
) -> None:
    fault_server.script(step)
    async with uploader() as up:
        result = await up.put(url_for(fault_server), BODY)
    assert result.reason is not None
    assert "HTTP 403 AccessDenied" in result.reason


async def test_retries_stop_at_the_upload_deadline(fault_server: FaultServer) -> None:
    fake = FakeTime()
    fault_server.script(Step(500))
    async with make_uploader(fake, monotonic=fake.clock, deadline_s=2.5,
                             backoff_s=(1.0, 2.0, 4.0)) as up:
        result = await up.put(url_for(fault_server), BODY)
    # 1 s of backoff fits in 2.5 s; the next 2 s would end past the deadline: not waited for.
    assert fake.sleeps == [1.0]
    assert len(result.attempts) == 2
    assert "SAFEGEN_UPLOAD_DEADLINE_S" in result.reason


async def test_a_backoff_sleep_that_overruns_the_deadline_ends_the_upload(
    fault_server: FaultServer,
) -> None:
    # On a busy host a sleep can end later than asked: the next attempt is not started past the
    # deadline, and the reason says which limit ended the upload.
    fake, asked = FakeTime(), []

    async def overrunning_sleep(delay: float) -> None:
        asked.append(delay)
        await fake.sleep(delay + 5.0)

    fault_server.script(Step(500))
    async with make_uploader(fake, monotonic=fake.clock, deadline_s=2.5, backoff_s=(1.0, 2.0),
                             sleep=overrunning_sleep) as up:
        result = await up.put(url_for(fault_server), BODY)
    assert (asked, len(result.attempts)) == ([1.0], 1)
    assert result.reason.endswith(
        "; no time left for another attempt within the upload deadline of 2.5 s "
        "(SAFEGEN_UPLOAD_DEADLINE_S)")


async def test_a_stalled_host_holds_only_its_own_slots(fault_server: FaultServer) -> None:
    healthy = FaultServer(host_name="healthy.test")

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("127.0.0.1")]

    fault_server.script(Step(200, body=b"x" * 1000, trickle_s=0.5))
    stalled_url = url_for(fault_server).replace("127.0.0.1", "stalled.test")
    try:
        async with make_uploader(resolver=resolver, max_per_host=2, backoff_s=()) as up:
            stuck = [asyncio.create_task(up.put(stalled_url, BODY)) for _ in range(6)]
            while len(fault_server.requests) < 2:
                await asyncio.sleep(0.01)  # polls the server's record, not a clock
            result = await up.put(url_for(healthy), BODY)
            assert result.ok, result.reason
            # Six uploads were started; only max_per_host of them reached the stalled host.
            assert len(fault_server.requests) == 2
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
    finally:
        healthy.close()
