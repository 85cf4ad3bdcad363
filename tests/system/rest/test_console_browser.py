"""The web console in a real headless Chromium (Debian's), driven by Playwright.

The page loads from the server alone, lists both models, a typed review gets a
sentiment answer as bars, a digit drawn with the mouse and an uploaded digit image get
class bars, and the live request rate shows the traffic. Skipped, saying why, only
when no browser (or no Playwright) can be had; `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.browser import browser  # noqa: F401  (fixture)
from tests.support.wire import mnist_images

def _bars(page, model: str) -> list[tuple[str, float]]:
    selector = f".panel[data-model={model}] .bar"
    return [(bar.get_attribute("data-label"), float(bar.get_attribute("data-value")))
            for bar in page.query_selector_all(selector)]


def _digit_png(path: Path) -> int | None:
    """A real MNIST test digit as a PNG (dark ink on white, as photographed); its label."""
    from PIL import Image

    images, labels = mnist_images(1)
    if labels is None:
        return None
    pixels = (255 - images[0, :, :, 0] * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((140, 140)).save(path)
    return int(labels[0])


def test_console_lists_models_and_answers_in_the_browser(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server.http_url + "/")
    page.wait_for_selector("#models tr[data-model=mnist]")
    page.wait_for_selector("#models tr[data-model=sentiment]")
    assert "READY" in page.inner_text("#models tr[data-model=mnist]")
    assert "server ready" in page.inner_text("#server-state")

    review = page.wait_for_selector(".panel[data-model=sentiment] textarea.review")
    review.fill("An absolute masterpiece: wonderful acting, I loved every minute of it.")
    page.click(".panel[data-model=sentiment] button.run")
    page.wait_for_selector(".panel[data-model=sentiment] .bar")
    (label, score), = _bars(page, "sentiment")
    assert label == "probability" and 0.5 < score <= 1.0
    assert "positive" in page.inner_text(".panel[data-model=sentiment] .answer")
    # The statistics-driven rate shows the request just answered: the table refreshes every
    # 2 s and a rate lasts one refresh, so poll often (function form: the page's CSP
    # forbids evaluating strings).
    page.wait_for_function("() => parseFloat(document.querySelector("
                           "'#models tr[data-model=sentiment] .rps').textContent) > 0",
                           polling=100, timeout=30_000)

    canvas = page.wait_for_selector(".panel[data-model=mnist] canvas.draw").bounding_box()
    x = canvas["x"] + canvas["width"] / 2
    page.mouse.move(x, canvas["y"] + 30)
    page.mouse.down()
    for step in range(1, 21):  # a "1": one vertical stroke
        page.mouse.move(x, canvas["y"] + 30 + step * (canvas["height"] - 60) / 20)
    page.mouse.up()
    page.wait_for_selector(".panel[data-model=mnist] .bar")
    drawn = _bars(page, "mnist")
    assert [name for name, _ in drawn] == [f"digit {i}" for i in range(10)]
    assert sum(value for _, value in drawn) == pytest.approx(1.0, abs=1e-3)
    assert max(drawn, key=lambda bar: bar[1])[0] == "digit 1", drawn

    label = _digit_png(tmp_path / "digit.png")
    if label is not None:
        page.set_input_files(".panel[data-model=mnist] input[type=file]",
                             str(tmp_path / "digit.png"))
        page.wait_for_function(
            "want => (document.querySelector('.panel[data-model=mnist] .answer') || "
            "{textContent: ''}).textContent.includes(want)", arg=f"digit {label}",
            timeout=30_000)

    page.screenshot(path=str(tmp_path / "console.png"), full_page=True)
    if target := os.environ.get("CONSOLE_SCREENSHOT"):
        shutil.copy(tmp_path / "console.png", target)
    assert not problems, problems
    page.close()
