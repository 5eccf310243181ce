"""A real headless browser for the console tests: Playwright driving Debian's ``chromium``.

No browser is downloaded: Playwright launches the system's Chromium. Every request a page makes
to anywhere but the server under test is aborted and recorded, so nothing leaves the machine and
a page that reaches out fails its test.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "Debian's chromium is not installed (scripts/system-deps.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """Module-scoped on purpose: Playwright's sync API keeps an event loop running in this
    thread while it is open, which would break every asyncio test that runs after it."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


@dataclass
class OfflinePage:
    """A page whose requests may only go to ``origin``; ``outside`` lists any that tried not to.

    ``console_errors`` keeps the browser console's errors (CSP violations are reported there).
    """

    page: Any
    origin: str
    outside: list[str] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def csp_violations(self) -> list[str]:
        return [e for e in self.console_errors if "Content Security Policy" in e]


def open_offline_page(browser: Any, origin: str) -> tuple[Any, OfflinePage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    offline = OfflinePage(page, origin.rstrip("/"))

    def route(route: Any) -> None:
        url = route.request.url
        if url.startswith(offline.origin + "/") or url.startswith(("data:", "blob:")):
            offline.requests.append(route.request)
            route.continue_()
        else:
            offline.outside.append(url)
            route.abort()

    context.route("**/*", route)
    page.on("console", lambda m: m.type == "error" and offline.console_errors.append(m.text))
    page.on("pageerror", lambda e: offline.console_errors.append(f"page error: {e}"))
    return context, offline
