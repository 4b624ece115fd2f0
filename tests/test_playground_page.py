# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""The Playground page under Streamlit's AppTest: columns equal plain transformers/peft output,
and bad input (missing adapter, foreign adapter, empty or too long prompt) gets a clear message
while the rest of the page keeps working."""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.fixtures_playground import other_base_adapter, tiny_adapters  # noqa: F401
from tests.test_compare import reference

ROOT = Path(__file__).resolve().parent.parent
PAGE = str(ROOT / "pages" / "playground.py")


def widget(items, label):
    return next(w for w in items if w.label == label)


def open_page(model: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    widget(at.text_input, "Base model").set_value(model)
    return at.run()


def finish(at: AppTest, key: str = "playground_generate", timeout: float = 60) -> AppTest:
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
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.title[0].value == "Playground"
    assert [t.label for t in at.tabs] == ["Side by side", "Evaluate on a test set"]
    assert all(w.help for w in [*at.text_input, *at.text_area, *at.number_input, *at.slider, *at.toggle, *at.selectbox])


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
    base, alpha = reference(tiny_model_dir, msgs, n=12).strip(), reference(tiny_model_dir, msgs, tiny_adapters["alpha"], n=12).strip()
    assert base != alpha
    assert base in shown and alpha in shown
    assert {"**base** · no adapter", "**alpha**"} <= {m.value for m in at.markdown}
    assert sum(m.label == "Tokens/s" for m in at.metric) == 2
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
    assert not at.exception and any(m.label == "Tokens" for m in at.metric)


def test_evaluate_tab_scores_base_and_adapter(tiny_model_dir, tiny_adapters):
    at = open_page(str(tiny_model_dir))
    widget(at.text_area, "Other adapters (one per line)").set_value(str(tiny_adapters["alpha"]))
    at.run()
    assert widget(at.selectbox, "Dataset").value == "banking-intents"
    widget(at.number_input, "Examples").set_value(2)
    widget(at.button, "Evaluate").click()
    at = finish(at.run(), key="playground_evaluate", timeout=120)
    assert not at.exception
    result = at.session_state["playground_eval_result"]
    assert result.metric == "accuracy" and len(result.rows) == 2 and result.models == ["base", "alpha"]
    frames = [df.value for df in at.dataframe]
    metrics = next(f for f in frames if "accuracy" in getattr(f, "columns", []))
    assert list(metrics.index) == ["base", "alpha"]
    assert {b.label for b in at.get("download_button")} >= {"Markdown report", "CSV"}
