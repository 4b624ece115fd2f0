"""The Model loading lab in a real browser: load the embedded model at two precisions from the page."""

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, open_page, screenshot, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.embedded]


def test_loading_lab_loads_and_measures_in_chromium(app_server, page):
    # A deep link (pages/_ui.py routes it through app.py's navigation). Settings travel in the URL
    # (st.query_params), so a link reproduces a comparison.
    open_page(page, app_server, "loading_lab?model=embedded&precisions=fp32,nf4&ppl=64&answer_tokens=4",
              wait_for_text="Model loading lab")
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Model loading lab")).to_be_visible()
    expect(page.get_by_text("NF4 up close").first).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Load and measure").click()
    # The page keeps answering while the worker loads: progress shows, and the Cancel button is live.
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled(timeout=30_000)
    expect(page.locator('[data-testid="stProgress"]').first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="Measured vs predicted")).to_be_visible(timeout=300_000)
    wait_idle(page)
    assert_no_exception(page)
    expect(page.locator('[data-testid="stAlertContentError"]')).to_have_count(0)
    expect(page.get_by_role("heading", name="What changed inside")).to_be_visible()
    expect(page.get_by_text("Greedy answers, side by side")).to_be_visible()
    assert page.locator(".js-plotly-plot").count() >= 4
    # The results table fits the page: no column (perplexity, load time) scrolled out of sight.
    table = page.locator('[data-testid="stDataFrame"]').first
    table.scroll_into_view_if_needed()
    overflow = table.evaluate("e => { const s = e.querySelector('.dvn-scroller'); "
                              "return s ? s.scrollWidth - s.clientWidth : -1; }")
    assert 0 <= overflow <= 1, overflow
    expect(page.get_by_text("Why RSS grew as it did")).to_be_visible()
    expect(page.get_by_text("predicted tokens of the 64 read").first).to_be_visible()
    page.get_by_role("heading", name="Measured vs predicted").scroll_into_view_if_needed()
    page.mouse.wheel(0, 350)  # the table and the measured-vs-predicted chart in one view
    page.wait_for_timeout(500)
    png = screenshot(page, "screenshot-loading-lab.png")
    assert png.stat().st_size > 10_000


@pytest.fixture(scope="module")
def offline_server(tmp_path_factory):
    """A server that knows it is offline (HF_HUB_OFFLINE) with an empty Hub cache: the same on any machine."""
    from tests.browser import AppServer, free_port

    server = AppServer(free_port(), env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("hub"))})
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


def _model(page, text: str) -> None:
    box = page.get_by_role("textbox", name="Model")
    box.fill(text)
    box.press("Enter")
    wait_idle(page)


def test_bad_models_get_one_message_at_once_and_it_goes_with_the_input(offline_server, page):
    open_page(page, offline_server, "loading_lab", wait_for_text="Model loading lab")
    errors = page.locator('[data-testid="stAlertContentError"]')
    load = page.get_by_role("button", name="Load and measure")
    _model(page, "no-such-owner/no-such-model")  # a Hub id that is not cached, offline: said before any click
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text("Hugging Face Hub cache")
    expect(errors.first).to_contain_text("Offline, use 'embedded'")
    expect(errors.first).not_to_contain_text("catalog")
    expect(load).to_be_disabled()
    _model(page, "Llama-3.2-1B")  # a catalog name: a config without weights, one message
    expect(errors).to_have_count(1)
    expect(errors.first).to_contain_text("config without weights")
    _model(page, "embedded")  # the message goes with the input that caused it
    expect(errors).to_have_count(0)
    expect(load).to_be_enabled()
    assert_no_exception(page)


def test_a_cancelled_run_is_marked_in_chromium(offline_server, page):
    open_page(page, offline_server, "loading_lab?model=embedded&precisions=fp32,int8,nf4&ppl=512&answer_tokens=32",
              wait_for_text="Model loading lab")
    page.get_by_role("button", name="Load and measure").click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled(timeout=30_000)
    cancel.click()
    expect(page.get_by_text("Cancelled").first).to_be_visible(timeout=300_000)
    expect(page.get_by_text("Not run:").first).to_be_visible()
    wait_idle(page)
    assert_no_exception(page)
