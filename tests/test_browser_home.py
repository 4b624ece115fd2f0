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
    icon = page.locator("link[rel='shortcut icon']").get_attribute("href") or ""
    assert icon and "gstatic" not in icon and "fonts." not in icon, icon  # served by the app: works offline
    png = screenshot(page, "screenshot-home.png")
    assert png.stat().st_size > 10_000


def test_deep_link_as_first_request_still_routes_through_app(browser):
    """A fresh server whose first request is a deep link must still run app.py's navigation
    (shared sidebar, our menu), not Streamlit's legacy `pages/` folder mode; and it paints a line before the page's
    heavy imports (it showed a blank page for 6.6 s: issue 20 papercut 12, pages/_starting.py)."""
    server = start_server()  # its own: the deep link must be this server's very first request
    try:
        page = new_page(browser)
        page.add_init_script(SEEN_TEXTS)
        open_page(page, server, "home", wait_for_text="This machine")
        assert any("Starting QLoRA Lab" in t for t in page.evaluate("window.__seen"))  # painted before the imports
        expect(main(page).get_by_text("Starting QLoRA Lab")).to_have_count(0)  # and gone once they are done
        sidebar = page.locator('[data-testid="stSidebar"]')
        expect(sidebar.get_by_text("RAM").first).to_be_visible()  # app.py's sidebar ran
        expect(sidebar.get_by_text("ui", exact=True)).to_have_count(0)  # no legacy auto-menu of files
        assert_no_exception(page)
        page.context.close()
    finally:
        server.stop()


# Records, from before the page's own scripts run, every text that ever appeared in the app's main block.
SEEN_TEXTS = """
window.__seen = [];
new MutationObserver(() => {
  const main = document.querySelector('[data-testid="stMain"]');
  if (main && main.innerText) window.__seen.push(main.innerText);
}).observe(document, {subtree: true, childList: true, characterData: true});
"""


def test_a_fresh_public_server_paints_at_once_and_names_no_server_path(browser):
    """Issue 20 papercut 12: the first visit to a fresh server showed a blank page while app.py imported torch and
    friends (seconds); Home showed the server's cache path in public mode."""
    server = start_server({"QLORA_LAB_PUBLIC": "1"})  # its own: this must be the server's very first visit
    try:
        page = new_page(browser)
        page.add_init_script(SEEN_TEXTS)
        open_page(page, server, "", wait_for_text="This machine")
        seen = page.evaluate("window.__seen")
        assert any("Starting QLoRA Lab" in t for t in seen)  # painted before the heavy imports
        expect(main(page).get_by_text("Starting QLoRA Lab")).to_have_count(0)  # and gone once they are done
        expect(main(page).get_by_text("is ready.").first).to_be_visible()
        assert "/" not in main(page).get_by_text("is ready.").first.inner_text()  # no server path in public mode
        assert_no_exception(page)
        page.context.close()
    finally:
        server.stop()
