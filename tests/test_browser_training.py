"""Browser: drive a short training run end to end on the real app (tiny model), then reload the
page and check it re-attaches to the finished run from its folder."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, main, open_page, requires_chromium, screenshot, wait_idle

pytestmark = [requires_chromium, pytest.mark.browser]


def set_field(page, label: str, value: str) -> None:
    box = main(page).get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    wait_idle(page)


@pytest.mark.training
def test_short_run_from_the_page(app_server, page, tiny_model_dir):
    open_page(page, app_server, "training", wait_for_text="Configure a run")
    assert_no_exception(page)
    set_field(page, "Base model", str(tiny_model_dir))
    set_field(page, "Max steps", "4")
    set_field(page, "Batch size", "2")
    set_field(page, "Max length (tokens)", "64")
    set_field(page, "Eval every (steps)", "2")
    expect(main(page).locator('[data-testid="stCode"]').filter(has_text="lab train --model").first).to_contain_text(
        "--max-steps 4")
    # a refresh keeps what was typed (the form lives in the URL)
    page.reload(wait_until="domcontentloaded")
    wait_idle(page)
    expect(main(page).get_by_label("Max steps", exact=True)).to_have_value("4")
    expect(main(page).get_by_label("Base model", exact=True)).to_have_value(str(tiny_model_dir))
    main(page).get_by_role("button", name="Train", exact=True).click()
    # this tab's run is under way: its Train button is off (a second click cannot start another)
    expect(main(page).get_by_role("button", name="Queue this run", exact=True)).to_be_disabled()
    status = main(page).get_by_text("FINISHED", exact=False).or_(main(page).get_by_text("FAILED", exact=False))
    expect(status.first).to_be_visible(timeout=600_000)
    assert "FINISHED" in status.first.inner_text(), page.locator('[data-testid="stMain"]').inner_text()[:2000]
    expect(main(page).get_by_text("Train loss").first).to_be_visible()
    expect(main(page).get_by_text("Peak memory").first).to_be_visible()
    assert_no_exception(page)
    main(page).get_by_text("Current run").first.scroll_into_view_if_needed()
    screenshot(page, "screenshot-training.png")

    # A new tab (no session state) re-attaches through ?run= and the run's folder.
    url = page.url
    assert "run=" in url
    other = page.context.new_page()
    other.goto(url, wait_until="domcontentloaded")
    expect(main(other).get_by_text("FINISHED", exact=False).first).to_be_visible()
    expect(main(other).get_by_text("Run history").first).to_be_visible()
    other.close()
