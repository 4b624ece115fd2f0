"""Home in a real browser: the served app renders with no exception element."""

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, open_page, screenshot

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
