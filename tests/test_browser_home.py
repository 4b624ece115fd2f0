"""Home in a real browser: the served app renders with no exception element."""

import pytest
from playwright.sync_api import expect

from tests.browser import AppServer, assert_no_exception, free_port, open_page, screenshot

pytestmark = pytest.mark.browser


def test_home_renders_in_chromium(app_server, page):
    open_page(page, app_server, wait_for_text="This machine")
    expect(page.get_by_text("Compute dtype").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("is ready at").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("transformers").first).to_be_visible()
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("RAM").first).to_be_visible()
    assert_no_exception(page)
    png = screenshot(page, "screenshot-home.png")
    assert png.stat().st_size > 10_000


def test_deep_link_as_first_request_still_routes_through_app(browser):
    """A fresh server whose first request is a deep link must still run app.py's navigation
    (shared sidebar, our menu), not Streamlit's legacy `pages/` folder mode."""
    server = AppServer(free_port())
    try:
        server.wait_healthy()
        page = browser.new_page()
        open_page(page, server, "home", wait_for_text="This machine")
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_text("RAM").first).to_be_visible(timeout=30_000)  # app.py's sidebar ran
        expect(sidebar.get_by_text("ui", exact=True)).to_have_count(0)  # no legacy auto-menu of files
        assert_no_exception(page)
        page.close()
    finally:
        server.stop()
