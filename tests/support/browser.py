"""A real headless Chromium (Debian's) driven by Playwright, for the console's tests.

Skipped, saying why, only when no browser (or no Playwright) can be had; `.ci/run`
installs both. Import the ``browser`` fixture into a test module to use it.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def browser_path() -> str:
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium on this machine (apt-get install chromium, or set CHROMIUM_PATH); "
                ".ci/run installs it")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright package (dev extra) is missing")
    path = browser_path()
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox cannot start.
        instance = playwright.chromium.launch(executable_path=path, headless=True,
                                              args=["--no-sandbox", "--disable-gpu"])
        yield instance
        instance.close()


def data_url(path: Path) -> str:
    kind = "image/png" if path.suffix == ".png" else "image/jpeg"
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def watched_page(browser, url: str, width: int = 1200, height: int = 1000):
    """A page at url with its script errors collected in ``page.problems``."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.problems = []
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.goto(url)
    return page
