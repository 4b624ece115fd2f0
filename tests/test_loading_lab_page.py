"""The Model loading lab page under Streamlit's AppTest, driven on the tiny random Llama."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "loading_lab.py")
TASK = "loading_lab_task"


def _page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception
    return at


def _run_to_completion(at: AppTest, model: str, precisions: list[str], ppl_tokens: int = 64, max_new: int = 4) -> AppTest:
    at.text_input[0].set_value(model)
    at.multiselect[0].set_value(precisions)
    at.number_input[0].set_value(ppl_tokens)
    at.number_input[1].set_value(max_new)
    at.button[0].click().run()
    assert not at.exception
    task = at.session_state[TASK]
    task.wait(300)
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


def test_loading_two_precisions_shows_measured_vs_predicted(tiny_model_dir):
    at = _run_to_completion(_page(), str(tiny_model_dir), ["fp32", "nf4-dq"])
    assert not at.exception and not at.error
    results = at.session_state["loading_lab_results"]
    assert [r["precision"] for r in results] == ["fp32", "nf4-dq"]
    headers = [h.value for h in at.header]
    assert headers[:3] == ["Measured vs predicted", "What changed inside", "What it costs in quality"]
    table = at.dataframe[0].value
    assert list(table["precision"]) == ["fp32", "nf4-dq"]
    assert list(table["Linear class"]) == ["Linear", "Linear4bit"]
    assert (table["error %"].abs() <= 1.0).all()
    assert table["measured MB"][1] < table["measured MB"][0]  # 4-bit is smaller
    assert (table["perplexity"] > 1).all()
    assert len(_charts(at)) >= 4  # bytes, breakdown, perplexity, NF4 histogram
    assert [t.label for t in at.tabs] == ["FP32", "NF4 + double quant"]
    trees = [c.value for c in at.code if "LlamaForCausalLM(" in c.value]
    assert len(trees) == 2 and "Linear4bit(" in trees[1] and "Linear4bit(" not in trees[0]
    assert any("load_in_4bit=True" in c.value for c in at.code)
    assert any("only replaces nn.Linear" in " ".join(map(str, d.value.get("why", []))) for d in at.dataframe if "why" in d.value)
    assert at.query_params["precisions"] == "fp32,nf4-dq"


def test_unknown_folder_shows_a_clear_error_and_the_page_stays_usable(tmp_path, tiny_model_dir):
    at = _page()
    at.text_input[0].set_value(str(tmp_path / "no-such-model")).run()
    at.button[0].click().run()
    assert not at.exception
    assert any("neither an existing folder" in e.value for e in at.error)
    assert TASK not in at.session_state  # nothing started
    at = _run_to_completion(at, str(tiny_model_dir), ["fp32"], ppl_tokens=0, max_new=0)
    assert not at.exception and list(at.dataframe[0].value["precision"]) == ["fp32"]


def test_hub_id_offline_reports_what_to_do():
    at = _run_to_completion(_page(), "no-such-owner/no-such-model", ["nf4"], ppl_tokens=0, max_new=0)
    assert not at.exception
    messages = [e.value for e in at.error]
    assert any("Hub" in m and "offline" in m for m in messages), messages
    assert not any(h.value == "Measured vs predicted" for h in at.header)


def test_nf4_up_close_layer_errors(tiny_model_dir):
    at = _page()
    at.text_input[0].set_value(str(tiny_model_dir)).run()
    assert at.selectbox[1].value.endswith("layers.0.self_attn.q_proj.weight")
    at.toggle[0].set_value(True).run()  # raw values axis
    assert not at.exception
    button = next(b for b in at.button if b.label == "Quantization error of every layer")
    button.click().run()
    at.session_state["loading_lab_nf4_task"].wait(120)
    at.run()
    assert not at.exception
    labels = [m.label for m in at.metric]
    assert labels == ["int8 mean relative error", "fp4 mean relative error", "nf4 mean relative error", "nf4-dq mean relative error"]
    values = {m.label.split()[0]: float(m.value.rstrip("%")) for m in at.metric}
    assert 0 < values["int8"] < values["nf4"] < values["fp4"]
