# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""The Playground page under Streamlit's AppTest: columns equal plain transformers/peft output,
and bad input (missing adapter, foreign adapter, empty or too long prompt) gets a clear message
while the rest of the page keeps working."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.fixtures_playground import make_adapter, other_base_adapter, tiny_adapters  # noqa: F401
from tests.test_compare import reference

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "playground.py")


@pytest.fixture(autouse=True)
def empty_runs(tmp_path, monkeypatch) -> Path:
    """A runs/ folder of this test's own: runs other tests trained must not be preselected here."""
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("QLORA_LAB_RUNS", str(runs))
    return runs


def widget(items, label):
    return next(w for w in items if w.label == label)


def open_page(model: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    widget(at.text_input, "Base model").set_value(model)
    return at.run()


def finish(at: AppTest, key: str = "playground_generate", timeout: float = 300) -> AppTest:
    """Rerun the script (as the page's polling fragment would) until the background task is over."""
    deadline = time.time() + timeout
    while key in at.session_state and time.time() < deadline:
        time.sleep(0.2)
        at.run()
    assert key not in at.session_state, "task did not finish"
    return at.run()


def generate(at: AppTest, prompt: str, max_new: int = 12) -> AppTest:
    widget(at.number_input, "Max new tokens").set_value(max_new)
    widget(at.text_area, "Prompt").set_value(prompt)
    widget(at.button, "Generate").click()
    return finish(at.run())


def texts(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_page_renders_with_defaults():
    at = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not at.exception
    assert at.title[0].value == "Playground"
    assert [t.label for t in at.tabs] == ["Side by side", "Evaluate on a test set"]
    assert all(w.help for w in [*at.text_input, *at.text_area, *at.number_input, *at.slider, *at.toggle, *at.selectbox])


@pytest.mark.slow
def test_side_by_side_columns_match_plain_generate(tiny_model_dir, tiny_adapters):
    at = open_page(str(tiny_model_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(f"{tiny_adapters['alpha']}\n/no/such/adapter")
    at.run()
    assert any("does not exist" in e.value and "left out" in e.value for e in at.error)
    prompt = "Name three colours of the rainbow."
    at = generate(at, prompt)
    assert not at.exception
    msgs = [{"role": "user", "content": prompt}]
    shown = texts(at)
    base, alpha = (
        reference(tiny_model_dir, msgs, n=12).strip(),
        reference(tiny_model_dir, msgs, tiny_adapters["alpha"], n=12).strip(),
    )
    assert base != alpha
    assert base in shown and alpha in shown
    assert {"**base** · no adapter", "**alpha**"} <= {m.value for m in at.markdown}
    figures = [c.value for c in at.caption if "tokens/s" in c.value]
    assert len(figures) == 2 and all(" tokens · **" in f and " s** · **" in f for f in figures)
    widget(at.toggle, "Show raw text").set_value(True)
    at.run()
    raw = [c.value for c in at.code]
    assert len(raw) == 2 and all(f"<|im_start|>user\n{prompt}<|im_end|>" in c for c in raw)


def test_chat_mode_keeps_each_columns_history(tiny_model_dir, tiny_adapters):
    at = open_page(str(tiny_model_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(str(tiny_adapters["alpha"]))
    widget(at.toggle, "Chat mode").set_value(True)
    at = generate(at.run(), "Hello!", max_new=6)
    at = generate(at, "And then?", max_new=6)
    chat = at.session_state["playground_chat"]
    assert set(chat) == {"base", "alpha"}
    assert [m["role"] for m in chat["base"]] == ["user", "assistant", "user", "assistant"]
    assert chat["base"][1]["content"] != chat["alpha"][1]["content"]  # each column keeps its own answers
    assert not at.exception


@pytest.mark.slow
def test_bad_input_gets_a_clear_message(tiny_model_dir, other_base_adapter):
    at = open_page(str(tiny_model_dir))
    at = generate(at, "   ")
    assert any("prompt is empty" in e.value for e in at.error)
    at = generate(at, "word " * 600)
    assert any("exceeds the model's context" in e.value for e in at.error)
    widget(at.text_area, "Other adapters (one per line)").set_value(str(other_base_adapter))
    at.run()
    assert any("was trained on" in w.value for w in at.warning)
    at = generate(at, "Hi")
    assert any("does not fit this base" in e.value for e in at.error)
    assert not at.exception
    # The page still works afterwards: the base alone generates.
    widget(at.text_area, "Other adapters (one per line)").set_value("")
    at = generate(at.run(), "Hi", max_new=4)
    assert not at.exception and any("tokens/s" in c.value for c in at.caption)


def test_evaluate_tab_scores_base_and_adapter(tiny_model_dir, tiny_adapters):
    at = open_page(str(tiny_model_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(str(tiny_adapters["alpha"]))
    at.run()
    assert widget(at.selectbox, "Dataset").value == "banking-intents"
    widget(at.number_input, "Examples").set_value(2)
    widget(at.button, "Evaluate").click()
    at = finish(at.run(), key="playground_evaluate", timeout=300)
    assert not at.exception
    result = at.session_state["playground_eval_result"]
    assert result.metric == "accuracy" and len(result.rows) == 2 and result.models == ["base", "alpha"]
    frames = [df.value for df in at.dataframe]
    metrics = next(f for f in frames if "accuracy" in getattr(f, "columns", []))
    assert list(metrics.index) == ["base", "alpha"]
    examples = next(f for f in frames if "reference" in getattr(f, "columns", []))
    from lab.generate.evaluate import load_examples

    queries = [e.messages[-1]["content"].split("\n\n")[-1] for e in load_examples("banking-intents", 2)]
    assert list(examples["prompt"]) == queries  # the customer's query, not the instruction every example shares
    assert all(a[:2] in ("✓ ", "✗ ") for a in [*examples["base"], *examples["alpha"]])  # text marks, no emoji
    assert {b.label for b in at.get("download_button")} >= {"Markdown report", "CSV"}


def _run(runs: Path, name: str, adapter: Path, base: Path, precision: str, status: str | None = None) -> Path:
    """A training run folder as the Training page leaves it: the adapter and lab_run.json (with how it ended)."""
    folder = runs / name
    shutil.copytree(adapter, folder)
    (folder / "lab_run.json").write_text(json.dumps({"precision": precision, "base_model": {
        "spec": str(base), "display_name": base.name, "kind": "folder", "pretrained_id": str(base)},
        **({"status": status} if status else {})}))
    return folder


def test_newest_matching_run_is_preselected_and_a_precision_change_is_noted(tiny_model_dir, tiny_adapters,
                                                                            other_base_adapter, empty_runs):
    older = _run(empty_runs, "older-run", tiny_adapters["beta"], tiny_model_dir, "fp32")
    time.sleep(0.05)
    newest = _run(empty_runs, "newest-run-with-a-rather-long-name-nf4", tiny_adapters["alpha"], tiny_model_dir, "nf4")
    time.sleep(0.05)
    _run(empty_runs, "zz-other-base", other_base_adapter, other_base_adapter.parent, "fp32")  # newer, other base
    at = open_page(str(tiny_model_dir))
    assert not at.exception
    assert widget(at.multiselect, "Adapters from runs/").value == [str(newest)]  # not the other base's, not older
    at = generate(at, "Hi", max_new=4)
    notes = [c.value for c in at.caption if "Trained on a NF4 base; here on FP32" in c.value]
    assert len(notes) == 1  # beside the adapter's column only
    # The same adapter at the precision it was trained at: no note.
    widget(at.selectbox, "Precision").set_value("nf4")
    at = generate(at.run(), "Hi", max_new=4)
    assert not any("Trained on a" in c.value for c in at.caption)
    assert str(older) not in widget(at.multiselect, "Adapters from runs/").value


def test_score_chart_axis_and_labels():
    from pages._charts import score_bars, short_labels

    long = "Llama-3.2-1B-banking-intents_SFT_LoRa16_NF4-20261123-235959"
    fig = score_bars(["base", long, long + "-2"], [0.0, 0.0, 0.0], True, "banking-intents: 8 test examples")
    bar = fig.data[0]
    assert tuple(fig.layout.yaxis.range) == (0, 1.1) and fig.layout.yaxis.tickformat == ".0%"  # 0–100%, never −100%
    assert list(bar.text) == ["0.0%"] * 3 and bar.textposition == "outside"  # zero scores still labelled
    assert list(bar.customdata) == ["base", long, long + "-2"]  # the full name on hover
    assert all(len(x) <= 18 for x in bar.x) and len(set(bar.x)) == 3  # short, and still three bars
    assert short_labels(["base"]) == ["base"]
    ppl = score_bars(["base", "alpha"], [12.5, 8.0], False, "t")
    assert ppl.layout.yaxis.range[0] == 0 and ppl.layout.yaxis.range[1] >= 12.5
    assert list(ppl.data[0].text) == ["12.50", "8.00"]


def test_a_model_that_cannot_be_loaded_gets_a_hint_that_fits_this_page():
    at = open_page("no-such-model-name")
    assert not at.exception
    errors = [e.value for e in at.error if "no-such-model-name" in e.value]
    assert len(errors) == 1 and "catalog" not in errors[0] and "'embedded'" in errors[0]
    at = open_page("Llama-3.2-1B")  # a catalog config: no weights to generate from
    assert [e.value for e in at.error if "config without weights" in e.value]


def test_the_newest_finished_run_is_preselected_over_a_newer_stopped_one(tiny_model_dir, tiny_adapters, empty_runs):
    """Issue 20 papercut 6: a run stopped after 2 steps is not what the page offers first."""
    finished = _run(empty_runs, "finished-run", tiny_adapters["beta"], tiny_model_dir, "fp32", "finished")
    time.sleep(0.05)
    _run(empty_runs, "stopped-run", tiny_adapters["alpha"], tiny_model_dir, "fp32", "stopped")
    at = open_page(str(tiny_model_dir))
    assert widget(at.multiselect, "Adapters from runs/").value == [str(finished)]
    assert any(c.value.startswith("**finished-run**: ") for c in at.caption)  # what it is, beside the short chip
    assert sorted(widget(at.multiselect, "Adapters from runs/").options) == ["finished-run", "stopped-run"]  # short


def test_an_error_goes_once_its_cause_is_fixed():
    """Issue 20 bug 3: "Pick a base model that can be loaded first" stayed after the base was fixed."""
    at = open_page("no-such-model-name")
    widget(at.button, "Generate").click()
    at.run()
    assert any("Pick a base model that can be loaded first" in e.value for e in at.error)
    widget(at.toggle, "Show raw text").set_value(True)
    at.run()  # any rerun with the same inputs keeps the message
    assert any("Pick a base model that can be loaded first" in e.value for e in at.error)
    widget(at.text_input, "Base model").set_value("embedded")
    at.run()
    assert not at.exception and not at.error  # the cause is gone, and so is the message


def test_each_columns_figures_are_shown_whole(tiny_model_dir, tiny_adapters):
    """Issue 20 bug 6: the "Seconds" figure was cut to "81.…": three st.metric values side by side in a column
    (a metric's value is one line that ends in an ellipsis). Now one caption a narrow column wraps."""
    at = open_page(str(tiny_model_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(str(tiny_adapters["alpha"]))
    at = generate(at.run(), "Hi", max_new=4)
    assert not [m for m in at.metric if m.label in ("Tokens", "Seconds", "Tokens/s")]
    last = at.session_state["playground_last"]
    for name in ("base", "alpha"):
        c = last.columns[name]
        line = next(cap.value for cap in at.caption if cap.value == last.figures(name))
        assert f"**{c.seconds:.2f} s**" in line and f"**{c.tokens}** tokens" in line
