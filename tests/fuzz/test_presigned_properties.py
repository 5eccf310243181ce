"""Property-based fuzzing of presigned-URL surgery and the upload-target checks.

Arbitrary text and URL-shaped strings go through ``split_url``, ``rename_object``, ``redact``,
``expires_at`` and the egress policy's ``admit_url``. Properties: only ``SafegenError``
subclasses escape (``redact`` never raises at all); ``split_url`` round-trips; a rename keeps
everything but the last path segment byte for byte, the query above all; ``redact`` never shows a
signature's value.
"""

from __future__ import annotations

import string
from datetime import datetime

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from safegen.delivery.presigned import (
    REDACTED,
    expires_at,
    object_name,
    redact,
    rename_object,
    split_url,
)
from safegen.egress import EgressPolicy, admit_url
from safegen.errors import SafegenError, UploadTargetRejected
from tests.fuzz import DERANDOMIZE, examples

FUZZ = settings(
    deadline=None, database=None, derandomize=DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow],
)
# Characters that matter to URL parsing, plus escapes, plus anything at all.
URL_CHARS = st.sampled_from(list("/?#&=%+:@[].;~-_ ") + list("aZ09") + ["%2F", "%3D", "%26"])
URL_TEXT = st.lists(URL_CHARS | st.characters(), max_size=40).map("".join)
SIGNATURE_NAMES = st.sampled_from(
    ["Signature", "X-Amz-Signature", "x-amz-signature", "SIGNATURE", "X-Goog-Signature",
     "X-Amz-Security-Token", "X-Amz-Credential", "AWSAccessKeyId", "sig"]
)
# A signature value as a client could send it: base64 or hex, percent-escaped or not.
SECRET = st.text(string.ascii_letters + string.digits + "+/=%", min_size=12, max_size=64).filter(
    lambda v: not v.isdigit()
)
OTHER_PARAM = st.tuples(
    st.sampled_from(["Expires", "X-Amz-Date", "X-Amz-Expires", "acl", "partNumber", "a", ""]),
    st.text(string.printable.replace("&", "").replace("#", ""), max_size=20),
)
OBJECT_NAME = st.from_regex(r"[A-Za-z0-9._~-]{1,64}", fullmatch=True).filter(
    lambda n: n not in {".", ".."}
)


@st.composite
def presigned_urls(draw: st.DrawFn) -> tuple[str, str, str]:
    """``(url, secret, signature parameter name)``: a URL-shaped string with one secret in it."""
    scheme = draw(st.sampled_from(["https", "http", "HTTPS", "ftp"]))
    host = draw(st.sampled_from(["s3.example.com", "127.0.0.1:9000", "[::1]:8", "b.example:443",
                                 "user:pw@h.example", "h"]))
    segments = draw(st.lists(URL_TEXT.map(lambda t: t.replace("?", "").replace("#", "")),
                             max_size=4))
    name, secret = draw(SIGNATURE_NAMES), draw(SECRET)
    params = [f"{k}={v}" for k, v in draw(st.lists(OTHER_PARAM, max_size=4))]
    params.insert(draw(st.integers(0, len(params))), f"{name}={secret}")
    url = f"{scheme}://{host}/{'/'.join(segments)}?{'&'.join(params)}"
    return url, secret, name


ANY_URL = st.one_of(st.text(max_size=200), presigned_urls().map(lambda t: t[0]),
                    URL_TEXT.map(lambda t: "https://" + t))


@settings(FUZZ, max_examples=examples(500))
@given(url=ANY_URL)
def test_split_url_round_trips_or_rejects(url: str) -> None:
    try:
        origin, path, query, fragment = split_url(url)
    except UploadTargetRejected:
        assert "://" not in url
        return
    assert origin + path + query + fragment == url
    assert not query or query.startswith("?")
    assert not fragment or fragment.startswith("#")
    assert "?" not in path
    assert "#" not in path


@settings(FUZZ, max_examples=examples(500))
@given(url=ANY_URL, name=OBJECT_NAME)
def test_rename_keeps_everything_but_the_last_segment(url: str, name: str) -> None:
    try:
        renamed = rename_object(url, name)
    except SafegenError:
        return
    origin, path, query, _ = split_url(url)
    new_origin, new_path, new_query, new_fragment = split_url(renamed)
    assert new_query == query  # byte for byte: the signature covers these exact bytes
    assert new_origin == origin
    assert new_fragment == ""
    assert new_path.rsplit("/", 1)[0] == (path or "/").rsplit("/", 1)[0]
    assert object_name(renamed) == name
    assert rename_object(renamed, name) == renamed  # idempotent


@settings(FUZZ, max_examples=examples(500))
@given(case=presigned_urls())
def test_redact_never_shows_a_signature(case: tuple[str, str, str]) -> None:
    url, secret, name = case
    assume(url.count(secret) == 1)  # the same text elsewhere (say, as Expires) is not a leak
    safe = redact(url)
    assert secret not in safe, (name, safe)
    if "://" in url:
        assert f"{name}={REDACTED}" in safe
    assert "pw@" not in safe


@settings(FUZZ, max_examples=examples(500))
@given(url=ANY_URL)
def test_redact_never_raises(url: str) -> None:
    assert isinstance(redact(url), str)


@settings(FUZZ, max_examples=examples(500))
@given(
    url=ANY_URL,
    expiry=st.lists(
        st.tuples(
            st.sampled_from(["Expires", "X-Amz-Date", "X-Amz-Expires", "X-Goog-Date",
                             "X-Goog-Expires", "expires", "x-amz-date"]),
            st.one_of(st.integers(-(10**20), 10**20).map(str), st.text(max_size=20),
                      st.from_regex(r"\d{8}T\d{6}Z", fullmatch=True)),
        ),
        max_size=4,
    ),
)
def test_expires_at_returns_a_datetime_or_rejects(url: str, expiry: list[tuple[str, str]]) -> None:
    if expiry:
        url += ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in expiry)
    try:
        when = expires_at(url)
    except UploadTargetRejected:
        return
    assert when is None or (isinstance(when, datetime) and when.tzinfo is not None)


POLICIES = st.builds(
    EgressPolicy,
    allowed_schemes=st.sampled_from([("https",), ("http", "https")]),
    allowed_hosts=st.sampled_from([(), ("s3.example.com",), ("*.example.com",), ("[::1]",)]),
    allowed_ports=st.sampled_from([(), (443, 9000)]),
)


@settings(FUZZ, max_examples=examples(500))
@given(url=ANY_URL, policy=POLICIES)
def test_admit_url_accepts_only_what_it_can_describe(url: str, policy: EgressPolicy) -> None:
    try:
        target = admit_url(url, policy)
        scheme, host, port = target.scheme, target.host, target.port
        host_header = target.host_header
    except SafegenError as exc:
        message = exc.message
        assert message
        return
    assert scheme in policy.allowed_schemes
    assert 0 < port < 65536
    assert policy.host_allowed(host)
    assert url.isascii()
    assert " " not in url
    assert "#" not in url
    assert "@" not in split_url(url)[0]  # no userinfo in the authority
    assert host
    assert host_header.startswith(host if ":" not in host else f"[{host}]")
    assert not policy.allowed_ports or port in policy.allowed_ports
