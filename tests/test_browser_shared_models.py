# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""Three people in three browsers on one server: each sees only their own adapter's column, the
sidebar counts who holds the shared model, and a closed tab gives its hold back."""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.browser import TIMEOUT_MS, assert_no_exception, main, new_page, open_page, requires_chromium, wait_idle
from tests.fixtures_playground import tiny_adapters  # noqa: F401

pytestmark = [requires_chromium, pytest.mark.browser]


def holders(page, model: str) -> int:
    """How many sessions the sidebar says hold `model` at fp32 (this one included)."""
    line = page.locator('[data-testid="stSidebar"] li').filter(has_text=f"{model} @ fp32").first
    line.wait_for()
    text = line.inner_text()
    m = re.search(r"in use: (yours)?(?: \+ )?(?:(\d+) other sessions?)?", text)
    assert m, text
    return (1 if m.group(1) else 0) + int(m.group(2) or 0)


def test_three_browsers_share_the_model_not_the_adapters(app_server, browser, tiny_model_dir, tiny_adapters):
    model = str(tiny_model_dir)
    pages = [new_page(browser) for _ in range(3)]
    contexts = [p.context for p in pages]
    adapters = [tiny_adapters["alpha"], tiny_adapters["beta"], None]
    for page, adapter in zip(pages, adapters, strict=True):
        query = f"playground?model={quote(model)}&prompt={quote('Name three colours.')}"
        open_page(page, app_server, query + (f"&adapter={quote(str(adapter))}" if adapter else ""), "Side by side")
        main(page).get_by_role("spinbutton", name="Max new tokens").fill("6")
        main(page).get_by_role("spinbutton", name="Max new tokens").press("Enter")
        wait_idle(page)
    for page in pages:  # all three press Generate, then all wait
        main(page).get_by_role("button", name="Generate").click()
    for page, adapter in zip(pages, adapters, strict=True):
        expect(main(page).get_by_text("Tokens/s")).to_have_count(2 if adapter else 1)
        expect(main(page).get_by_role("button", name="Stop")).to_have_count(0)
        assert_no_exception(page)
    alice, bob, carol = pages
    expect(alice.locator(".st-key-column-alpha")).to_have_count(1)
    expect(alice.locator(".st-key-column-beta")).to_have_count(0)
    expect(bob.locator(".st-key-column-beta")).to_have_count(1)
    expect(bob.locator(".st-key-column-alpha")).to_have_count(0)
    expect(main(carol).locator('[class*="st-key-column-"]')).to_have_count(1)  # the base column only
    # a fourth tab reads the sidebar: reloading carol's own tab would end her session, and on a loaded machine
    # the sidebar may reap it before the count (2 instead of 3: what a loaded CI run saw)
    watcher = new_page(browser)
    contexts.append(watcher.context)
    open_page(watcher, app_server, "", "QLoRA Lab")  # the sidebar (every page draws it) lists the loaded models
    before = holders(watcher, model)
    assert before >= 3  # alice, bob and carol (a session of an earlier test may not be reaped yet)
    contexts[0].close()  # alice leaves
    deadline = time.monotonic() + TIMEOUT_MS / 1000  # the sidebar reaps closed tabs at most every 10 s
    while time.monotonic() < deadline:  # each reload asks the sidebar again; stop as soon as it has reaped
        watcher.reload()
        wait_idle(watcher)
        if holders(watcher, model) < before:
            break
        watcher.wait_for_timeout(1000)  # between polls, not a wait for the answer
    assert holders(watcher, model) < before
    for c in contexts[1:]:
        c.close()
