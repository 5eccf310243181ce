"""Presigned URL surgery: rename keeps every other byte, redact hides secrets, expiry parses."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest

from safegen.delivery.presigned import (
    expires_at,
    is_sigv4,
    object_name,
    post_policy_expires_at,
    redact,
    rename_object,
    split_url,
)
from safegen.errors import InvalidInput, UploadTargetRejected

MD5_NAME = "d41d8cd98f00b204e9800998ecf8427e.jpg"
SPEC_URL = (
    "https://prod-data.example.com/aiu-character/000/1.png"
    "?AWSAccessKeyId=AKIAEXAMPLE&Signature=ab%2Bcd%2Fef%3D&Expires=1756921542"
)
V4_URL = (
    "https://bucket.s3.us-east-1.amazonaws.com/dir/1.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20250101T120000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Security-Token=FwoGZXIvYXdzEXAMPLE%2B%2F&X-Amz-Signature=0123abcd"
)


def test_rename_spec_example_keeps_query_byte_for_byte() -> None:
    renamed = rename_object(SPEC_URL, MD5_NAME)
    assert renamed == (
        "https://prod-data.example.com/aiu-character/000/" + MD5_NAME
        + "?AWSAccessKeyId=AKIAEXAMPLE&Signature=ab%2Bcd%2Fef%3D&Expires=1756921542"
    )


@pytest.mark.parametrize(
    "query",
    [
        "?a=%2F&a=%2f&b=x+y&c=%20&d=&e&f==&g=%7E~&h=%252F",  # odd and repeated encodings
        "?Signature=a+b%2Bc%3D%3d",  # '+' and lower-case escapes stay as they are
        "?",  # empty query
        "",  # no query at all
        "?x=/path/in/query/1.png&y=a?b",  # slashes and '?' inside the query are not the path
    ],
)
def test_rename_changes_only_the_last_path_segment(query: str) -> None:
    url = f"http://Host.Example:8443/b%2Fucket/dir%20x/1.png{query}"
    renamed = rename_object(url, MD5_NAME)
    assert renamed == f"http://Host.Example:8443/b%2Fucket/dir%20x/{MD5_NAME}{query}"


def test_rename_v4_url_and_prefix_forms() -> None:
    assert rename_object(V4_URL, "x.jpg") == V4_URL.replace("/dir/1.png?", "/dir/x.jpg?")
    # A URL naming a prefix (path ends with '/') gets the name appended.
    assert rename_object("https://h/bucket/000/?Signature=s", "n.jpg") == (
        "https://h/bucket/000/n.jpg?Signature=s"
    )
    assert rename_object("https://h?Signature=s", "n.jpg") == "https://h/n.jpg?Signature=s"
    assert rename_object("https://h/1.png", "n.jpg") == "https://h/n.jpg"


@pytest.mark.parametrize("name", ["", ".", "..", "a/b.jpg", "a b.jpg", "a?.jpg", "a#.jpg", "ü.jpg",
                                  "%2F.jpg", "x" * 256])
def test_rename_refuses_names_that_would_need_encoding(name: str) -> None:
    with pytest.raises(UploadTargetRejected) as refused:
        rename_object(SPEC_URL, name)
    assert refused.value.message == (
        "object name must be 1-255 characters from A-Z a-z 0-9 . _ ~ -"
    )


def test_rename_refuses_a_fragment_saying_so() -> None:
    with pytest.raises(UploadTargetRejected) as refused:
        rename_object("https://h/1.png?Signature=s#part", MD5_NAME)
    assert refused.value.message == "upload URL must not contain a fragment ('#')"


def test_is_sigv4_only_for_signature_version_4() -> None:
    assert is_sigv4(V4_URL)
    assert is_sigv4(V4_URL.replace("X-Amz-Signature", "x-amz-signature"))  # names: any case
    assert not is_sigv4(SPEC_URL)  # version 2 signs Content-MD5 when sent: never add one
    # A raw '=' in a value (unescaped base64 padding): the name ends at the first '=' (WHATWG).
    assert is_sigv4("https://h/1.png?X-Amz-Signature=c2lnbmF0dXJl==")
    assert not is_sigv4("https://h/1.png")
    assert not is_sigv4("not a url")  # unparseable: never raises


@pytest.mark.parametrize("url", ["not a url", "/relative/1.png", "", "https://h/1.png#frag"])
def test_rename_refuses_malformed_urls(url: str) -> None:
    with pytest.raises(InvalidInput):
        rename_object(url, MD5_NAME)


@pytest.mark.parametrize("url", ["not a url", "/relative/1.png", "", None])
def test_a_url_that_is_not_absolute_is_refused_saying_so(url: str) -> None:
    with pytest.raises(UploadTargetRejected) as refused:
        split_url(url)
    assert refused.value.message == "upload URL must be an absolute http(s) URL"


def test_redact_skips_empty_query_items_and_keeps_the_rest() -> None:
    # "&&" and a trailing "&" hold no parameter: the items after them are still redacted and kept.
    assert redact("https://h/p?&a=1&&Signature=s&b=2&") == (
        "https://h/p?a=1&Signature=REDACTED&b=2"
    )


def test_split_url_round_trips() -> None:
    for url in (SPEC_URL, V4_URL, "https://h", "https://h?q#f", "https://u@h:1/p/?q=/#f"):
        assert "".join(split_url(url)) == url
    assert object_name(SPEC_URL) == "1.png"
    assert object_name("https://h?q=1") == ""  # no path: no placeholder name


def test_redact_spec_url_hides_signature_and_key_id() -> None:
    redacted = redact(SPEC_URL)
    assert redacted == (
        "https://prod-data.example.com/aiu-character/000/1.png"
        "?AWSAccessKeyId=REDACTED&Signature=REDACTED&Expires=1756921542"
    )


def test_redact_v4_url_hides_credential_token_and_signature() -> None:
    redacted = redact(V4_URL)
    for secret in ("AKIAEXAMPLE", "FwoGZXIvYXdzEXAMPLE", "0123abcd"):
        assert secret not in redacted
    assert "X-Amz-Date=20250101T120000Z" in redacted
    assert "X-Amz-Expires=3600" in redacted
    assert "X-Amz-SignedHeaders=host" in redacted
    assert redacted.count("REDACTED") == 3


def test_redact_other_secrets_userinfo_and_fragment() -> None:
    url = "https://user:pw@h/p?sig=1&X-Goog-Signature=2&token=3&x%2Damz%2Dsignature=4&keep=5#frag"
    redacted = redact(url)
    assert redacted == (
        "https://h/p?sig=REDACTED&X-Goog-Signature=REDACTED&token=REDACTED"
        "&x%2Damz%2Dsignature=REDACTED&keep=5"
    )


def test_redact_never_raises() -> None:
    assert redact("garbage") == "<unparseable url>"
    assert redact(None) == "<unparseable url>"  # type: ignore[arg-type]


def test_expiry_sigv2() -> None:
    assert expires_at(SPEC_URL) == datetime(2025, 9, 3, 17, 45, 42, tzinfo=timezone.utc)


def test_expiry_sigv4_and_google() -> None:
    assert expires_at(V4_URL) == datetime(2025, 1, 1, 13, 0, tzinfo=timezone.utc)
    goog = "https://storage.googleapis.com/b/o?X-Goog-Date=20250101T000000Z&X-Goog-Expires=60"
    assert expires_at(goog) == datetime(2025, 1, 1, 0, 1, tzinfo=timezone.utc)


def test_expiry_absent_and_earliest_wins() -> None:
    assert expires_at("https://h/b/1.png") is None
    assert expires_at("https://h/b/1.png?Signature=x") is None
    both = "https://h/k?Expires=0&X-Amz-Date=20250101T000000Z&X-Amz-Expires=1"
    assert expires_at(both) == datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("Expires=soon", "whole number"),
        ("Expires=-1", "whole number"),
        ("Expires=1.5", "whole number"),
        ("Expires=999999999999", "too large"),
        ("Expires=9999999999999", "whole number"),
        ("Expires=1&Expires=2", "conflicting"),
        ("X-Amz-Date=20250101T000000Z", "without the other"),
        ("X-Amz-Expires=60", "without the other"),
        ("X-Amz-Date=2025-01-01&X-Amz-Expires=60", "YYYYMMDDTHHMMSSZ"),
        ("X-Amz-Date=20251301T000000Z&X-Amz-Expires=60", "YYYYMMDDTHHMMSSZ"),
        ("X-Amz-Date=99991231T235959Z&X-Amz-Expires=999999999999", "too large"),
    ],
)
def test_expiry_malformed(query: str, message: str) -> None:
    with pytest.raises(UploadTargetRejected, match=message):
        expires_at(f"https://h/k?{query}")


def test_expiry_repeated_but_equal_is_fine() -> None:
    assert expires_at("https://h/k?Expires=60&Expires=60") == datetime(
        1970, 1, 1, 0, 1, tzinfo=timezone.utc
    )


def test_post_policy_expiry() -> None:
    policy = base64.b64encode(json.dumps({"expiration": "2030-01-02T03:04:05Z"}).encode()).decode()
    assert post_policy_expires_at({"policy": policy}) == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc
    )
    assert post_policy_expires_at({"key": "k"}) is None
    with pytest.raises(UploadTargetRejected) as refused:
        post_policy_expires_at({"Policy": "!!!"})
    assert refused.value.message == "presigned POST 'policy' field is malformed"
    # Characters outside base64 are an error, not skipped: "*" inside a valid encoding.
    with pytest.raises(UploadTargetRejected, match="policy"):
        post_policy_expires_at({"policy": policy[:8] + "*" + policy[8:]})
    with pytest.raises(UploadTargetRejected, match="policy"):
        post_policy_expires_at({"policy": base64.b64encode(b"[]").decode()})


@pytest.mark.parametrize(
    ("expiration", "instant"),
    [("2030-01-02T03:04:05", datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)),  # naive: UTC
     ("2030-01-02T03:04:05+02:00", datetime(2030, 1, 2, 1, 4, 5, tzinfo=timezone.utc))],
)
def test_post_policy_expiry_without_z(expiration: str, instant: datetime) -> None:
    policy = base64.b64encode(json.dumps({"expiration": expiration}).encode()).decode()
    when = post_policy_expires_at({"policy": policy})
    assert when is not None
    assert when.utcoffset() is not None  # comparable with the clock
    assert when == instant
