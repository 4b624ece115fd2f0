"""Home in a real browser: the served app renders with no exception element."""

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, main, new_page, open_page, screenshot, start_server

pytestmark = pytest.mark.browser


def test_home_renders_in_chromium(app_server, page):
    open_page(page, app_server, wait_for_text="This machine")
    expect(main(page).get_by_text("Compute dtype").first).to_be_visible()
    expect(main(page).get_by_text("is ready at").first).to_be_visible()
    expect(main(page).get_by_text("transformers").first).to_be_visible()
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("RAM").first).to_be_visible()
    assert_no_exception(page)
    png = screenshot(page, "screenshot-home.png")
    assert png.stat().st_size > 10_000


def test_deep_link_as_first_request_still_routes_through_app(browser):
    """A fresh server whose first request is a deep link must still run app.py's navigation
    (shared sidebar, our menu), not Streamlit's legacy `pages/` folder mode."""
    server = start_server()  # its own: the deep link must be this server's very first request
    try:
        page = new_page(browser)
        open_page(page, server, "home", wait_for_text="This machine")
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_text("RAM").first).to_be_visible()  # app.py's sidebar ran
        expect(sidebar.get_by_text("ui", exact=True)).to_have_count(0)  # no legacy auto-menu of files
        assert_no_exception(page)
        page.context.close()
    finally:
        server.stop()
