"""The console reads pictures and many inputs the way a person expects, in real Chromium.

Uploaded photos of every shape give their digit (the console prepares them with the same
steps as the CLI: tests hold the two 28x28 inputs equal), several pictures or reviews
are scored in one go with a table of results, and a wrong file, an empty drawing or a
stopped server get a sentence a person can act on.
"""

from __future__ import annotations

import numpy as np
import pytest

from server.client.images import load_digit
from tests.conftest import REPO_ROOT, ServerProcess
from tests.support.browser import browser, data_url, watched_page  # noqa: F401  (fixture)

SAMPLES = sorted((REPO_ROOT / "examples" / "digits").glob("*.[pj][np]g"))
WORDS = {"zero": 0, "one": 1, "three": 3, "four": 4, "seven": 7, "eight": 8}
PANEL = ".panel[data-model=mnist]"

PREPARE_IN_PAGE = """async url => {
  const image = new Image();
  image.src = url;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const pixels = prepareDigit(greyOfImageData(context.getImageData(0, 0, canvas.width, canvas.height)));
  return pixels && Array.from(pixels);
}"""


def _answer(page, panel: str = PANEL) -> str:
    page.wait_for_function("p => { const r = document.querySelector(p + ' .result');"
                           " return r && r.textContent && !r.textContent.includes('running…'); }",
                           arg=panel, timeout=30_000)
    return page.inner_text(f"{panel} .result")


@pytest.fixture()
def page(browser, server):  # noqa: F811
    page = watched_page(browser, server.http_url + "/")
    page.wait_for_selector(f"{PANEL} canvas.draw")
    yield page
    assert not page.problems, page.problems
    page.close()


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_console_and_cli_prepare_a_picture_alike(page, path):
    in_browser = np.array(page.evaluate(PREPARE_IN_PAGE, data_url(path)), np.float32)
    on_cli = load_digit(path)[..., 0].reshape(-1)
    # Same steps and constants; only JPEG decoders and float widths differ.
    assert np.abs(in_browser - on_cli).mean() < 0.01
    assert np.abs(in_browser - on_cli).max() < 0.25


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_an_uploaded_photo_is_read_as_its_digit(page, path):
    page.set_input_files(f"{PANEL} input[type=file]", str(path))
    answer = _answer(page)
    assert f"probabilities: digit {WORDS[path.name.split('_')[0]]}" in answer, answer
    assert "%" in answer and "e-" not in answer  # percentages, not e-notation


def test_several_pictures_are_scored_together_in_a_table(page):
    page.set_input_files(f"{PANEL} input[type=file]", [str(p) for p in SAMPLES])
    page.wait_for_selector(f"{PANEL} table.results")
    rows = [row.inner_text().split("\t") for row in
            page.query_selector_all(f"{PANEL} table.results tbody tr")]
    assert [(name, int(digit)) for name, digit, *_ in rows] == [
        (p.name, WORDS[p.name.split("_")[0]]) for p in SAMPLES]


def test_several_reviews_one_per_line(page):
    panel = ".panel[data-model=sentiment]"
    page.fill(f"{panel} textarea.review", "A wonderful, moving film.\n\n"
              "Dull, predictable and far too long. I want my money back.\nLoved it!")
    page.click(f"{panel} button.run")
    page.wait_for_selector(f"{panel} table.results")
    rows = [row.inner_text().split("\t") for row in
            page.query_selector_all(f"{panel} table.results tbody tr")]
    assert [r[1] for r in rows] == ["positive", "negative", "positive"], rows
    assert all(r[2].endswith("%") for r in rows)


def test_wrong_file_and_empty_drawing_say_what_to_do(page, tmp_path):
    page.click(f"{PANEL} button.run")  # nothing drawn yet
    assert "Draw a digit first" in _answer(page)
    notes = tmp_path / "notes.png"
    notes.write_text("these are not pixels")
    page.set_input_files(f"{PANEL} input[type=file]", str(notes))
    page.wait_for_function("p => document.querySelector(p + ' .result').textContent"
                           ".includes('not a picture')", arg=PANEL, timeout=30_000)
    assert "notes.png" in page.inner_text(f"{PANEL} .result .error")


def test_the_panel_shows_the_interface_and_the_model_card(page):
    about = page.inner_text(f"{PANEL} details.about", timeout=30_000)
    page.click(f"{PANEL} details.about summary")
    about = page.inner_text(f"{PANEL} details.about")
    assert "image FP32 [-1, 28, 28, 1]" in about
    assert "probabilities FP32 [-1, 10]" in about
    assert "accuracy" in about and "99." in about  # the card's measured test accuracy
    assert "MNIST" in about


def test_phone_width_fits_and_the_page_has_an_icon(browser, server):  # noqa: F811
    page = watched_page(browser, server.http_url + "/", width=390, height=844)
    page.wait_for_selector("#models tr[data-model=mnist]")
    page.wait_for_selector(f"{PANEL} canvas.draw")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at phone width"
    icon = page.evaluate("() => fetch(document.querySelector('link[rel=icon]').href)"
                         ".then(r => [r.status, r.headers.get('content-type')])")
    assert icon == [200, "image/svg+xml"]
    assert not page.problems, page.problems
    page.close()


def test_a_stopped_server_is_shown_as_unreachable(browser, models_dir):  # noqa: F811
    own = ServerProcess(models_dir)
    try:
        page = watched_page(browser, own.http_url + "/")
        page.wait_for_selector("#models tr[data-model=sentiment] .pill.READY")
        page.wait_for_selector(".panel[data-model=sentiment] button.run")
    finally:
        own.stop()
    page.wait_for_selector("#server-state.not-ready", timeout=30_000)
    assert page.inner_text("#server-state") == "unreachable"
    row = page.inner_text("#models tr[data-model=sentiment]")
    assert "READY" not in row and "unknown" in row
    page.click(".panel[data-model=sentiment] button.run")
    assert "unreachable" in _answer(page, ".panel[data-model=sentiment]")
    page.close()
