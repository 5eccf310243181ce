"""Retry rules, Retry-After, ETag comparison and failure wording, apart from any HTTP."""

from __future__ import annotations

import base64
import hashlib
import ssl

import httpx
import pytest

from safegen.delivery import UploadConfig, content_md5_header
from safegen.delivery.outcomes import (
    describe_status,
    etag_mismatch,
    is_retryable_status,
    retry_after_s,
    s3_error_code,
    transport_error_kind,
)
from safegen.settings import Settings
from tests.support.uploads import upload_config

MD5 = hashlib.md5(b"abc").hexdigest()


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(408, True), (429, True), (500, True), (502, True), (503, True), (504, True), (599, True),
     (501, False), (505, False), (400, False), (403, False), (404, False), (409, False),
     (412, False), (301, False), (307, False)],
)
def test_retryable_statuses(status: int, retryable: bool) -> None:
    assert is_retryable_status(status) is retryable


def test_transport_error_kinds() -> None:
    assert transport_error_kind(httpx.ReadTimeout("t")) == ("read_timeout", True)
    assert transport_error_kind(httpx.ConnectError("c")) == ("connect_error", True)
    assert transport_error_kind(httpx.RemoteProtocolError("r")) == ("connection_dropped", True)
    assert transport_error_kind(httpx.UnsupportedProtocol("u")) == ("transport_error", False)
    tls = httpx.ConnectError("c")
    tls.__cause__ = ssl.SSLCertVerificationError("bad certificate")
    assert transport_error_kind(tls) == ("tls_verification", False)


def test_retry_after_forms() -> None:
    assert retry_after_s("3", now=0) == 3.0
    assert retry_after_s(None, now=0) is None
    assert retry_after_s("soon", now=0) is None
    assert retry_after_s("Thu, 01 Jan 1970 00:00:10 GMT", now=4.0) == pytest.approx(6.0)
    assert retry_after_s("Thu, 01 Jan 1970 00:00:10 GMT", now=100.0) == 0.0


@pytest.mark.parametrize(
    ("etag", "mismatch"),
    [(f'"{MD5}"', False), (MD5.upper(), False), (f'W/"{MD5}"', False), (None, False),
     ('"' + "0" * 32 + '"', True), ('"abc-2"', False), ('"' + "0" * 31 + '"', False), ("", False)],
)
def test_etag_comparison(etag: str | None, mismatch: bool) -> None:
    assert etag_mismatch(etag, MD5) is mismatch


def test_s3_error_code_and_reasons_never_echo_the_body() -> None:
    body = b"<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIA</AWSAccessKeyId></Error>"
    code = s3_error_code(body)
    assert code == "SignatureDoesNotMatch"
    assert s3_error_code(b"<html>nope</html>") is None
    renamed = describe_status(403, code, renamed=True, sent_headers=False)
    assert "does not cover the renamed object key" in renamed
    assert "AKIA" not in renamed
    headers = describe_status(403, code, renamed=False, sent_headers=True)
    assert "Content-MD5" in headers
    assert "expired" in describe_status(403, "AccessDenied", renamed=False, sent_headers=False)
    assert "redirect" in describe_status(302, None, renamed=False, sent_headers=False)
    assert "kept failing" in describe_status(503, "SlowDown", renamed=False, sent_headers=False)


def test_content_md5_header() -> None:
    assert content_md5_header(b"") == "1B2M2Y8AsgTpgAmY7PhCfg=="
    assert base64.b64decode(content_md5_header(b"abc")).hex() == MD5


@pytest.mark.parametrize(
    "bad",
    [{"backoff_s": (1.0, -1.0)}, {"io_timeout_s": 0}, {"attempt_timeout_s": 0},
     {"deadline_s": 0}, {"max_body_bytes": 0}, {"max_retry_after_s": -1}, {"max_per_host": 0}],
)
def test_config_refuses_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must"):
        upload_config(**bad)


def test_config_defaults_follow_the_spec() -> None:
    config = UploadConfig.from_settings(Settings())
    assert config.backoff_s == (1.0, 2.0, 4.0)
    assert config.policy.allowed_schemes == ("https",)
    assert not config.policy.allow_loopback
    assert not config.policy.allow_private
    # Every attempt and every upload ends: a stalled storage cannot hold a job for ever.
    assert 0 < config.attempt_timeout_s <= config.deadline_s
