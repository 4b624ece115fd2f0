"""The Model loading lab page under Streamlit's AppTest, driven on the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "loading_lab.py")
TASK = "loading_lab_task"


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    return at


def _run_to_completion(
    at: AppTest, model: str, precisions: list[str], ppl_tokens: int = 64, max_new: int = 4
) -> AppTest:
    at.text_input[0].set_value(model)
    at.multiselect[0].set_value(precisions)
    at.number_input[0].set_value(ppl_tokens)
    at.number_input[1].set_value(max_new).run()  # the model is checked as it is typed: then the button enables
    at.button[0].click().run()
    assert not at.exception
    task = at.session_state[TASK]
    task.wait(600)
    assert not task.running
    return at.run()  # the polling fragment sees the task done and re-renders the page with results


def _charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def test_page_renders_with_defaults_and_help_on_every_widget():
    at = _page()
    assert at.title[0].value == "Model loading lab"
    assert at.text_input[0].value == "embedded"
    assert at.multiselect[0].value == ["fp32", "int8", "nf4"]
    for widget in [*at.text_input, *at.multiselect, *at.selectbox, *at.number_input, *at.text_area]:
        assert widget.help, widget.label
    assert any(h.value == "NF4 up close" for h in at.header)
    assert _charts(at), "the NF4 histogram of the default model's first q_proj"


@pytest.mark.slow
def test_loading_two_precisions_shows_measured_vs_predicted(tiny_model_dir):
    at = _run_to_completion(_page(), str(tiny_model_dir), ["fp32", "nf4-dq"])
    assert not at.exception and not at.error
    results = at.session_state["loading_lab_results"]
    assert [r.precision for r in results] == ["fp32", "nf4-dq"]  # typed LoadReports, not dicts
    headers = [h.value for h in at.header]
    assert headers[:3] == ["Measured vs predicted", "What changed inside", "What it costs in quality"]
    table = at.dataframe[0].value
    assert list(table["precision"]) == ["fp32", "nf4-dq"]
    # The main table keeps to what fits a page; perplexity and load time are in it, the rest one click away.
    assert list(table.columns) == ["precision", "measured MB", "predicted MB", "error %", "RSS growth MB", "load s",
                                   "perplexity"]
    assert list(at.dataframe[1].value["Linear class"]) == ["Linear", "Linear4bit"]
    assert (table["error %"].abs() <= 1.0).all()
    assert table["measured MB"][1] < table["measured MB"][0]  # 4-bit is smaller
    assert (table["perplexity"] > 1).all()
    why = next(m.value for m in at.markdown if m.value.startswith("**Why RSS grew as it did**"))
    for r in results:  # next to the numbers, each precision's own figures
        assert f"- {r.precision}: +" in why
    # 64 tokens read in windows of 256 = one window: 63 predicted, and the page says so.
    assert any("63 predicted tokens of the 64 read" in m.value for m in at.markdown)
    assert len(_charts(at)) >= 4  # bytes, breakdown, perplexity, NF4 histogram
    assert [t.label for t in at.tabs] == ["FP32", "NF4 + double quant"]
    trees = [c.value for c in at.code if "LlamaForCausalLM(" in c.value]
    assert len(trees) == 2 and "Linear4bit(" in trees[1] and "Linear4bit(" not in trees[0]
    assert any("load_in_4bit=True" in c.value for c in at.code)
    assert any(
        "only replaces nn.Linear" in " ".join(map(str, d.value.get("why", [])))
        for d in at.dataframe
        if "why" in d.value
    )
    assert at.query_params["precisions"] == "fp32,nf4-dq"


@pytest.mark.slow
def test_unknown_folder_shows_a_clear_error_and_the_page_stays_usable(tmp_path, tiny_model_dir):
    at = _page()
    at.text_input[0].set_value(str(tmp_path / "no-such-model")).run()
    assert not at.exception  # said at once, before any click, and the button waits for a usable model
    assert [e.value for e in at.error if "neither an existing" in e.value] == [e.value for e in at.error]
    assert len(at.error) == 1 and "catalog" not in at.error[0].value  # this page cannot load a catalog name
    assert at.button[0].disabled and TASK not in at.session_state  # nothing can start
    at = _run_to_completion(at, str(tiny_model_dir), ["fp32"], ppl_tokens=0, max_new=0)
    assert not at.exception and list(at.dataframe[0].value["precision"]) == ["fp32"]


def test_hub_id_offline_reports_what_to_do_at_once(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty Hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = _page()
    at.text_input[0].set_value("no-such-owner/no-such-model").run()
    assert not at.exception
    messages = [e.value for e in at.error]
    assert len(messages) == 1, messages  # one message, not one per section
    assert "Hugging Face Hub cache" in messages[0] and "Offline, use 'embedded'" in messages[0]
    assert "catalog" not in messages[0]
    assert at.button[0].disabled and TASK not in at.session_state  # no 24 s job that fails
    assert not any(h.value == "Measured vs predicted" for h in at.header)
    at.text_input[0].set_value("embedded").run()
    assert not at.error and not at.button[0].disabled  # the message goes with the input that caused it


def test_a_catalog_name_gets_one_clear_message():
    at = _page()
    at.text_input[0].set_value("Llama-3.2-1B").run()
    assert not at.exception
    assert len(at.error) == 1 and "config without weights" in at.error[0].value
    assert at.button[0].disabled


@pytest.mark.slow
def test_a_cancelled_run_is_marked_cancelled(tiny_model_dir):
    at = _page()
    at.text_input[0].set_value(str(tiny_model_dir))
    at.multiselect[0].set_value(["fp32", "int8", "nf4"]).run()
    at.button[0].click().run()
    task = at.session_state[TASK]
    task.cancel()  # what the Cancel button does
    task.wait(600)
    at.run()
    assert not at.exception
    warning = next(w.value for w in at.warning if "Cancelled" in w.value)
    done = [r.precision for r in at.session_state["loading_lab_results"]]
    assert len(done) < 3 and "Not run: " + ", ".join(p for p in ["fp32", "int8", "nf4"] if p not in done) in warning
    at.text_input[0].set_value("embedded").run()
    assert not any("Cancelled" in w.value for w in at.warning)  # new inputs: the old run's notes go


def test_nf4_up_close_layer_errors(tiny_model_dir):
    at = _page()
    at.text_input[0].set_value(str(tiny_model_dir)).run()
    assert at.selectbox[1].value.endswith("layers.0.self_attn.q_proj.weight")
    at.toggle[0].set_value(True).run()  # raw values axis
    assert not at.exception
    button = next(b for b in at.button if b.label == "Quantization error of every layer")
    button.click().run()
    at.session_state["loading_lab_nf4_task"].wait(300)
    at.run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels == [
        "int8 mean relative error",
        "fp4 mean relative error",
        "nf4 mean relative error",
        "nf4-dq mean relative error",
    ]
    values = {m.label.split()[0]: float(m.value.rstrip("%")) for m in at.metric}
    assert 0 < values["int8"] < values["nf4"] < values["fp4"]


def test_public_mode_suggests_only_what_it_can_load(monkeypatch, tmp_path):
    """Issue 20 bug 8: a refused path must not suggest a catalog name, nor the catalog name's error a model
    folder: public mode loads neither."""
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("QLORA_LAB_HUB_ALLOW", raising=False)
    at = _page()
    at.selectbox(key="ll_model").set_value("Hub id…").run()
    at.text_input(key="ll_model_hub").set_value(str(tmp_path / "models" / "mine")).run()
    (refused,) = [e.value for e in at.error]
    assert "not allowed here" in refused and "catalog" not in refused and "Gemma" not in refused
    at.text_input(key="ll_model_hub").set_value("Gemma-2-2B").run()  # what the old hint suggested
    (error,) = [e.value for e in at.error]
    assert "config without weights" in error and "folder" not in error and "'embedded'" in error
    assert at.button[0].disabled and TASK not in at.session_state
