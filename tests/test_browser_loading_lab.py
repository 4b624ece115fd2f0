"""The Model loading lab in a real browser: load the embedded model at two precisions from the page."""

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, main, open_page, screenshot, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.embedded]


def test_loading_lab_loads_and_measures_in_chromium(app_server, page):
    # A deep link (pages/_ui.py routes it through app.py's navigation). Settings travel in the URL
    # (st.query_params), so a link reproduces a comparison.
    open_page(page, app_server, "loading_lab?model=embedded&precisions=fp32,nf4&ppl=64&answer_tokens=4",
              wait_for_text="Model loading lab")
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Model loading lab")).to_be_visible()
    expect(main(page).get_by_text("NF4 up close").first).to_be_visible()
    main(page).get_by_role("button", name="Load and measure").click()
    # The page keeps answering while the worker loads: progress shows, and the Cancel button is live.
    expect(main(page).get_by_role("button", name="Cancel")).to_be_enabled()
    expect(main(page).locator('[data-testid="stProgress"]').first).to_be_visible()
    expect(main(page).get_by_role("heading", name="Measured vs predicted")).to_be_visible(timeout=600_000)
    wait_idle(page)
    assert_no_exception(page)
    expect(main(page).locator('[data-testid="stAlertContentError"]')).to_have_count(0)
    expect(main(page).get_by_role("heading", name="What changed inside")).to_be_visible()
    expect(main(page).get_by_text("Greedy answers, side by side")).to_be_visible()
    assert main(page).locator(".js-plotly-plot").count() >= 4
    # The results table fits the page: no column (perplexity, load time) scrolled out of sight.
    table = main(page).locator('[data-testid="stDataFrame"]').first
    table.scroll_into_view_if_needed()
    overflow = table.evaluate("e => { const s = e.querySelector('.dvn-scroller'); "
                              "return s ? s.scrollWidth - s.clientWidth : -1; }")
    assert 0 <= overflow <= 1, overflow
    expect(main(page).get_by_text("Why RSS grew as it did")).to_be_visible()
    expect(main(page).get_by_text("predicted tokens of the 64 read").first).to_be_visible()
    main(page).get_by_role("heading", name="Measured vs predicted").scroll_into_view_if_needed()
    page.mouse.wheel(0, 350)  # the table and the measured-vs-predicted chart in one view
    page.wait_for_timeout(500)
    png = screenshot(page, "screenshot-loading-lab.png")
    assert png.stat().st_size > 10_000


def _model(page, text: str) -> None:
    box = main(page).get_by_role("textbox", name="Model")
    box.fill(text)
    box.press("Enter")
    wait_idle(page)


def test_bad_models_get_one_message_at_once_and_it_goes_with_the_input(app_server, page):
    open_page(page, app_server, "loading_lab", wait_for_text="Model loading lab")
    errors = main(page).locator('[data-testid="stAlertContentError"]')
    load = main(page).get_by_role("button", name="Load and measure")
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


def test_a_cancelled_run_is_marked_in_chromium(app_server, page):
    open_page(page, app_server, "loading_lab?model=embedded&precisions=fp32,int8,nf4&ppl=512&answer_tokens=32",
              wait_for_text="Model loading lab")
    main(page).get_by_role("button", name="Load and measure").click()
    cancel = main(page).get_by_role("button", name="Cancel")
    expect(cancel).to_be_enabled()
    cancel.click()
    expect(main(page).get_by_text("Cancelled").first).to_be_visible(timeout=600_000)
    expect(main(page).get_by_text("Not run:").first).to_be_visible()
    wait_idle(page)
    assert_no_exception(page)
