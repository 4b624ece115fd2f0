# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""Three people in the Playground at once, as real Streamlit sessions (AppTest instances in one
process share the server's `st.cache_resource` objects, as browser sessions of one server do):
each sees only their own adapters, the shared model someone uses survives "Free unused models",
queued work runs first come first served, and Cancel takes a request out of the line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pages._ui import shared_models
from tests.fixtures_playground import tiny_adapters  # noqa: F401
from tests.test_compare import reference
from tests.test_playground_page import finish, widget

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
PROMPT = "Name three colours of the rainbow."
N = 8


@pytest.fixture(autouse=True)
def _fresh(fresh_server):
    """Each test is a new server (tests/conftest.py `fresh_server`)."""


def attendee(model: str, adapters: str = "") -> AppTest:
    """One browser session on the Playground, through the app (its sidebar included)."""
    at = AppTest.from_file(APP, default_timeout=180).run()
    at.switch_page("pages/playground.py").run()
    widget(at.text_input, "Base model").set_value(model)
    widget(at.text_area, "Other adapters (one per line)").set_value(adapters)
    widget(at.number_input, "Max new tokens").set_value(N)
    at.run()
    assert not at.exception
    return at


def _sidebar_script() -> None:
    from pages._ui import shared_sidebar

    shared_sidebar()


def sidebar_of(at: AppTest) -> AppTest:
    """The sidebar's shared-models part as the session `at` sees it (AppTest drops the sidebar of an
    app that switched pages, so it is drawn on its own, under the same session identity)."""
    view = AppTest.from_function(_sidebar_script, default_timeout=180)
    view.session_state["lab_owner"] = at.session_state["lab_owner"]
    return view.run()


def click(at: AppTest, label: str) -> AppTest:
    widget(at.button, label).click()
    return at.run()


def generate(at: AppTest) -> AppTest:
    """Type the prompt and press Generate (the prompt box is in a form: it is sent with the button)."""
    widget(at.text_area, "Prompt").set_value(PROMPT)
    return click(at, "Generate")


def headers(at: AppTest) -> set[str]:
    return {m.value for m in at.markdown if m.value.startswith("**")}


def shown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def wait_until(condition, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow
def test_three_sessions_keep_their_adapters_and_share_one_model(tiny_model_dir, tiny_adapters):
    model = str(tiny_model_dir)
    alice = attendee(model, str(tiny_adapters["alpha"]))
    bob = attendee(model, str(tiny_adapters["beta"]))
    carol = attendee(model)
    for at in (alice, bob, carol):  # all three press Generate before any has finished
        generate(at)
    for at in (alice, bob, carol):
        finish(at)
        assert not at.exception and not at.error
    msgs = [{"role": "user", "content": PROMPT}]
    base, alpha, beta = (reference(tiny_model_dir, msgs, a, n=N).strip() for a in
                         (None, tiny_adapters["alpha"], tiny_adapters["beta"]))
    assert len({base, alpha, beta}) == 3
    assert headers(alice) >= {"**base** · no adapter", "**alpha**"} and "**beta**" not in headers(alice)
    assert headers(bob) >= {"**base** · no adapter", "**beta**"} and "**alpha**" not in headers(bob)
    assert "**alpha**" not in headers(carol) and "**beta**" not in headers(carol)
    assert alpha in shown(alice) and beta not in shown(alice)
    assert beta in shown(bob) and alpha not in shown(bob)
    assert all(base in shown(at) for at in (alice, bob, carol))
    shared = shared_models()
    assert shared.registry.load_count == 1  # one copy of the weights for the room
    (status,) = shared.status().models
    owners = [at.session_state["lab_owner"] for at in (alice, bob, carol)]
    assert sorted(status["holders"]) == sorted(owners)
    assert sorted(owner for a in status["adapters"] for owner in a["owners"]) == sorted(owners[:2])

    # Carol's sidebar: the model is in use by her and two others; "Free unused models" frees only
    # a preloaded copy nobody holds, and alice's next generation runs on the same weights.
    shared.registry.get(model, "bf16")
    view = sidebar_of(carol)
    lines = [m.value for m in view.markdown]
    assert any("@ fp32" in x and "in use: yours + 2 other sessions" in x for x in lines), lines
    assert any("@ bf16" in x and "unused" in x for x in lines), lines
    click(view, "Free unused models")
    assert not view.exception
    assert shared.registry.loaded() == [(model, "fp32", "compute")]
    generate(alice)
    finish(alice)
    assert alpha in shown(alice) and shared.registry.load_count == 2  # fp32 + the preload; no reload


@pytest.mark.slow
def test_queued_requests_run_in_order_and_cancel_leaves_the_line(tiny_model_dir):
    model = str(tiny_model_dir)
    shared = shared_models()
    shared.registry.get(model, "fp32")  # loaded already: the requests below only queue to generate
    gate, busy = threading.Event(), threading.Event()

    def someone_else() -> None:
        with shared.queue().turn("generate", "someone-else"):
            busy.set()
            gate.wait(600)

    t = threading.Thread(target=someone_else)
    t.start()
    busy.wait(180)
    people = [attendee(model) for _ in range(3)]
    for i, at in enumerate(people):
        generate(at)
        wait_until(lambda i=i: len(shared.queue().status().waiting) == i + 1)
    alice, bob, carol = people
    wait_until(lambda: all(at.session_state["playground_generate"].poll().queued for at in people))
    for at in people:
        at.run()
    assert any("2 requests ahead of you" in x.value for x in bob.info), [x.value for x in bob.info]
    assert any("3 requests ahead of you" in x.value for x in carol.info)
    click(bob, "Cancel")
    finish(bob)
    assert any("Cancelled while waiting in the queue" in x.value for x in bob.info)
    assert [w["owner"] for w in shared.queue().status().waiting] == [
        at.session_state["lab_owner"] for at in (alice, carol)
    ]
    gate.set()
    t.join(180)
    for at in (alice, carol):
        finish(at)
        assert not at.exception and any("tokens/s" in c.value for c in at.caption), [c.value for c in at.caption]
    ran = [r["owner"] for r in reversed(shared.queue().status().recent) if r["state"] == "done"]
    assert ran == ["someone-else", alice.session_state["lab_owner"], carol.session_state["lab_owner"]]
