# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""The Playground in a real browser: base and adapter columns stream side by side and equal
plain transformers/peft output; a missing adapter is reported without breaking the page."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser import assert_no_exception, main, open_page, screenshot, wait_idle
from tests.fixtures_playground import tiny_adapters  # noqa: F401
from tests.test_compare import reference

pytestmark = pytest.mark.browser


def test_playground_side_by_side_in_chromium(app_server, page, tiny_model_dir, tiny_adapters):
    # Enter through the app (its navigation and sidebar), as a person would.
    open_page(page, app_server, "", wait_for_text="This machine")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Playground").click()
    main(page).get_by_text("Side by side").first.wait_for()
    wait_idle(page)
    base_box = main(page).get_by_role("textbox", name="Base model")
    base_box.fill(str(tiny_model_dir))
    base_box.press("Enter")
    wait_idle(page)
    adapters = main(page).get_by_role("textbox", name="Other adapters (one per line)")
    adapters.fill(f"{tiny_adapters['alpha']}\n/no/such/adapter")
    adapters.press("Control+Enter")
    wait_idle(page)
    expect(main(page).get_by_text("does not exist").first).to_be_visible()
    prompt = "Name three colours of the rainbow."
    main(page).get_by_role("spinbutton", name="Max new tokens").fill("12")
    main(page).get_by_role("spinbutton", name="Max new tokens").press("Enter")
    wait_idle(page)
    main(page).get_by_role("textbox", name="Prompt").fill(prompt)
    main(page).get_by_role("button", name="Generate").click()
    alpha = reference(tiny_model_dir, [{"role": "user", "content": prompt}], tiny_adapters["alpha"], n=12)
    expect(main(page).get_by_text(alpha.strip().split()[0]).first).to_be_visible()
    expect(main(page).get_by_text("Tokens/s")).to_have_count(2)
    expect(main(page).get_by_text("no adapter").first).to_be_visible()
    expect(main(page).get_by_role("button", name="Stop")).to_have_count(0)  # finished, polling stopped
    wait_idle(page)
    expect(main(page).get_by_role("textbox", name="Prompt")).to_have_value(prompt)
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("RAM").first).to_be_visible()  # the app's sidebar
    assert_no_exception(page)
    png = screenshot(page, "screenshot-playground.png")
    assert png.stat().st_size > 10_000


def test_newest_run_preselected_noted_and_scored_in_chromium(app_server, page, tiny_model_dir, tiny_adapters):
    import json
    import shutil

    from lab.paths import runs_dir

    name = "tiny-banking-intents_SFT_LoRa4_NF4-a-run-name-far-too-long-for-a-chart-axis"
    run = runs_dir() / name  # the server's runs/ (a temporary folder under tests)
    shutil.copytree(tiny_adapters["alpha"], run)
    (run / "lab_run.json").write_text(json.dumps({"precision": "nf4", "base_model": {
        "spec": str(tiny_model_dir), "display_name": tiny_model_dir.name, "kind": "folder",
        "pretrained_id": str(tiny_model_dir)}}))
    try:
        open_page(page, app_server, f"playground?model={tiny_model_dir}&precision=fp32", wait_for_text="Side by side")
        picker = main(page).get_by_text("Adapters from runs/").locator(
            "xpath=ancestor::div[@data-testid='stMultiSelect']"
        )
        expect(picker).to_contain_text(name[:20])  # the newest run on this base, preselected
        main(page).get_by_role("spinbutton", name="Max new tokens").fill("4")
        main(page).get_by_role("spinbutton", name="Max new tokens").press("Enter")
        wait_idle(page)
        main(page).get_by_role("button", name="Generate").click()
        expect(main(page).get_by_text("Tokens/s")).to_have_count(2)
        expect(main(page).get_by_text("Trained on a NF4 base; here on FP32").first).to_be_visible()
        main(page).get_by_role("tab", name="Evaluate on a test set").click()
        main(page).get_by_role("spinbutton", name="Examples").fill("2")
        main(page).get_by_role("spinbutton", name="Examples").press("Enter")
        wait_idle(page)
        main(page).get_by_role("button", name="Evaluate").click()
        chart = main(page).locator(".js-plotly-plot").last
        expect(chart).to_be_visible()
        wait_idle(page)
        def texts(selector: str) -> list[str]:  # SVG text has no innerText
            return chart.locator(selector).evaluate_all("els => els.map(e => e.textContent)")

        ticks = texts(".ytick text")
        assert ticks[0] == "0%" and ticks[-1] == "100%", ticks  # 0-100%, whatever the scores
        labels = texts(".xtick text")
        assert labels[0] == "base" and labels[1].endswith("…") and len(labels[1]) <= 18, labels
        bars = texts("text.bartext")
        assert len(bars) == 2 and all(b.endswith("%") for b in bars), bars  # every bar labelled, a zero one too
        assert_no_exception(page)
        chart.scroll_into_view_if_needed()
        screenshot(page, "playground-evaluation.png")
    finally:
        shutil.rmtree(run, ignore_errors=True)
