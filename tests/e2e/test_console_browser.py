"""The web console and the API docs in a real browser (headless Debian Chromium) against a real
server with tiny models. Requests to anywhere but the server are aborted and fail the test."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from tests.support import images
from tests.support.app_client import AUTH, TEST_KEY
from tests.support.browser import OfflinePage, chromium, open_offline_page  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture
def offline(chromium: Any, generator_server: Any) -> Iterator[OfflinePage]:  # noqa: F811
    context, offline_page = open_offline_page(chromium, generator_server.url)
    yield offline_page
    context.close()
    assert offline_page.outside == [], "the page tried to reach another host"
    assert offline_page.csp_violations() == []


def enter_key(offline: OfflinePage) -> None:
    page = offline.page
    page.goto(f"{offline.origin}/console")
    page.fill("#api-key", TEST_KEY)
    page.click("text=Use key")
    page.wait_for_selector("#key-status:has-text('connected')")


def card_states(page: Any) -> list[dict[str, Any]]:
    return page.eval_on_selector_all("#results .card", """cards => cards.map(c => ({
        classes: Array.from(c.classList), score: c.querySelector('.score').textContent,
        verdict: c.querySelector('.verdict').textContent,
        blurred: c.querySelector('.thumb').classList.contains('blurred'),
        error: c.querySelector('.error') ? c.querySelector('.error').textContent : null}))""")


def test_console_scores_two_images_shows_one_error_and_rejudges(
    offline, tmp_path, generator_server
):
    files = [tmp_path / "beach.jpg", tmp_path / "logo.png", tmp_path / "broken.jpg"]
    files[0].write_bytes(images.jpeg(11, (320, 240)))
    files[1].write_bytes(images.png(12, (200, 160)))
    files[2].write_bytes(b"this is not an image")
    expected = httpx.post(f"{generator_server.url}/v1/classify", headers=AUTH, timeout=60,
                          files=[("files", (f.name, f.read_bytes())) for f in files]).json()
    page = offline.page
    enter_key(offline)
    page.set_input_files("#file-input", [str(f) for f in files])
    # Locator waits, not page.wait_for_function: the console's CSP forbids eval, which it uses.
    expect(page.locator("#results .card")).to_have_count(3)
    expect(page.locator("#results .card.pending")).to_have_count(0)
    cards = card_states(page)
    for card, result in zip(cards, expected["results"], strict=True):
        if "error" in result:
            assert card["error"] == result["error"]["message"]
            assert "failed" in card["classes"]
        else:
            assert card["score"] == f"score {result['nsfw_score']:.4f}"
    offline.screenshot("console-classify")

    sent = len([r for r in offline.requests if r.url.endswith("/v1/classify")])
    page.focus("#threshold")
    page.keyboard.press("Home")  # threshold 0: every score is at or above it
    low = card_states(page)[:2]
    assert [c["verdict"] for c in low] == ["NSFW", "NSFW"]
    assert all(c["blurred"] for c in low)  # blurred until clicked
    page.click("#results .card:nth-child(1) .thumb")
    assert card_states(page)[0]["blurred"] is False
    page.focus("#threshold")
    page.keyboard.press("End")  # threshold 1: no score reaches it
    high = card_states(page)[:2]
    assert [c["verdict"] for c in high] == ["safe", "safe"]
    assert not any(c["blurred"] for c in high)
    assert page.text_content("#threshold-value") == "1.00"
    # Re-judging sends nothing.
    assert len([r for r in offline.requests if r.url.endswith("/v1/classify")]) == sent

    # The key lives in this tab's sessionStorage only, goes out as a Bearer header, never in a URL.
    assert page.evaluate("sessionStorage.getItem('safegen.apiKey')") == TEST_KEY
    assert page.evaluate("localStorage.length") == 0
    classify_calls = [r for r in offline.requests if r.url.endswith("/v1/classify")]
    assert classify_calls
    assert all(r.headers.get("authorization") == f"Bearer {TEST_KEY}" for r in classify_calls)
    # Only the first /v1/info, sent when the page opened before a key was typed, goes without.
    info_calls = [r.headers.get("authorization") for r in offline.requests if "/v1/info" in r.url]
    assert info_calls == [None, f"Bearer {TEST_KEY}"]
    assert not any(TEST_KEY in r.url for r in offline.requests)


def test_console_generates_inline_and_shows_the_image(offline):
    page = offline.page
    enter_key(offline)
    page.wait_for_selector("#generate:not([hidden])")
    page.fill("#prompt", "a lighthouse at dusk")
    page.fill("#width", "64")
    page.fill("#height", "128")
    page.fill("#steps", "2")
    page.fill("#seed", "7")
    page.uncheck("#upscale")
    page.click("#generate-button")
    page.wait_for_selector("#generate-status:has-text('done')", timeout=120_000)
    size = page.evaluate("[document.getElementById('generated-image').naturalWidth, "
                         "document.getElementById('generated-image').naturalHeight]")
    assert size == [64, 128]  # no upscale: the requested size
    source = page.get_attribute("#generated-image", "src")
    assert source.startswith("data:image/jpeg;base64,")
    jpeg = base64.b64decode(source.split(",", 1)[1])
    assert page.text_content("#gen-hash") == hashlib.md5(jpeg).hexdigest()  # spec: MD5 of JPEG
    assert 0 <= float(page.text_content("#gen-score")) <= 1
    assert page.text_content("#gen-upload") == "inline (no upload)"
    assert page.locator("#timing-bar span").count() >= 2  # the Server-Timing split
    offline.screenshot("console-generate")


def test_docs_render_from_the_server_alone(offline):
    page = offline.page
    page.goto(f"{offline.origin}/docs")
    page.wait_for_selector(".swagger-ui .info .title:has-text('safegen')")
    page.wait_for_selector(".opblock-summary-path:has-text('/v1/classify')")
    loaded = {r.url.removeprefix(offline.origin) for r in offline.requests}
    assert {"/openapi.json", "/docs/assets/swagger-ui-bundle.js"} <= loaded
    offline.screenshot("docs")


def test_landing_page_links_console_and_docs(offline):
    page = offline.page
    response = page.goto(f"{offline.origin}/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]
    page.click("text=Console")
    page.wait_for_url(f"{offline.origin}/console")
    offline.screenshot("landing-console")


def test_pages_send_a_strict_csp(generator_server):
    for path in ("/", "/console", "/console/assets/console.js", "/docs"):
        response = httpx.get(generator_server.url + path)
        assert response.status_code == 200
        policy = dict(
            p.strip().split(" ", 1) for p in response.headers["content-security-policy"].split(";")
        )
        assert policy["default-src"] == "'none'"
        assert policy["script-src"] == "'self'"
        assert policy["connect-src"] == "'self'"
        assert policy["frame-ancestors"] == "'none'"
    assert httpx.get(f"{generator_server.url}/console/assets/..%2Fapp.py").status_code == 404
    assert httpx.get(f"{generator_server.url}/docs/assets/core.py").status_code == 404


