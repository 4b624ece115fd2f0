"""The calculator and LoRA estimator in a real browser: URL-shared settings, widgets, uploads."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from lab.models.sources import resolve_source
from tests.browser import assert_no_exception, main, open_page, screenshot, wait_idle

pytestmark = pytest.mark.browser


def metric(page, label: str):
    return (
        main(page).locator('[data-testid="stMetric"]').filter(has_text=label).locator('[data-testid="stMetricValue"]').first
    )


def tab(page, name: str) -> None:
    main(page).get_by_role("tab", name=name, exact=True).click()


def test_calculator_from_a_shared_link(app_server, page):
    open_page(page, app_server, "calculator?model=Llama-3.2-3B&precision=nf4&dtype=fp16", wait_for_text="The answers")
    # the simulation runs in the background; its results replace the spinner, the answers on top
    expect(metric(page, "Simulated training peak")).to_be_visible()
    expect(metric(page, "Smallest GPU for training")).to_be_visible()
    tab(page, "Weights")
    expect(metric(page, "get_memory_footprint()")).to_have_text("2.20 GB")
    tab(page, "Training step")
    expect(main(page).get_by_text("Live bytes through one training step").first).to_be_visible()
    assert_no_exception(page)
    tab(page, "Does it fit?")
    screenshot(page, "screenshot-calculator.png")
    # a widget change reaches the URL, so the link can be shared
    main(page).locator('[data-testid="stButtonGroup"]').first.get_by_text("fp32", exact=True).click()
    wait_idle(page)
    expect(page).to_have_url(re.compile(r"precision=fp32"))
    expect(main(page).get_by_text("Method switched from qlora to lora").first).to_be_visible()
    tab(page, "Weights")
    expect(metric(page, "get_memory_footprint()")).to_have_text("12.85 GB")
    expect(page.locator('[data-testid="stSidebar"]').get_by_text("Precision & memory").first).to_be_visible()


def test_calculator_upload_and_bad_upload(app_server, page, tmp_path):
    open_page(
        page, app_server, "calculator?model=Upload+a+config.json%E2%80%A6", wait_for_text="Upload a model's config.json"
    )
    good = tmp_path / "config.json"
    good.write_bytes(resolve_source("Qwen2.5-0.5B").path.read_bytes())
    main(page).locator('input[type="file"]').set_input_files(str(good))
    expect(main(page).get_by_text("494,032,768").first).to_be_visible()
    bad = tmp_path / "broken.json"
    bad.write_text("{broken")
    # while the good config still simulates (its polling fragment ticks every 0.5 s): the page, stopped early now, once
    # crashed to a blank page when a tick of the previous run's fragment drew past its end (pages/_stop.py)
    main(page).locator('input[type="file"]').set_input_files(str(bad))
    try:
        expect(main(page).get_by_text("broken.json is not valid JSON").first).to_be_visible()
    finally:
        assert not page.js_errors, page.js_errors
    assert_no_exception(page)


def test_lora_estimator_seed_example(app_server, page):
    url = ("lora_estimator?model=Llama-3.2-3B&r=32&alpha=64.0&preset=custom"
           "&modules=q_proj&modules=k_proj&modules=v_proj&modules=o_proj")
    open_page(page, app_server, url, wait_for_text="Trainable parameters")
    expect(metric(page, "Trainable parameters")).to_have_text("18.35M")
    expect(metric(page, "Adapter file, fp32")).to_have_text("73.40 MB")
    assert_no_exception(page)
    screenshot(page, "screenshot-lora-estimator.png")
    main(page).locator('[data-testid="stButtonGroup"]').first.get_by_text("all-linear", exact=True).click()
    wait_idle(page)
    expect(metric(page, "Trainable parameters")).not_to_have_text("18.35M")
    assert_no_exception(page)
