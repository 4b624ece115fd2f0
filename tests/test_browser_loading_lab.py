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
    expect(page.locator('[data-testid="stError"]')).to_have_count(0)
    expect(page.get_by_role("heading", name="What changed inside")).to_be_visible()
    expect(page.get_by_text("Greedy answers, side by side")).to_be_visible()
    assert page.locator(".js-plotly-plot").count() >= 4
    page.get_by_role("heading", name="Measured vs predicted").scroll_into_view_if_needed()
    page.mouse.wheel(0, 350)  # the table and the measured-vs-predicted chart in one view
    page.wait_for_timeout(500)
    png = screenshot(page, "screenshot-loading-lab.png")
    assert png.stat().st_size > 10_000
