"""The app shell under Streamlit's AppTest: app.py routes to Home, and Home shows this machine.

The other pages have their own AppTest files; here, only what the shell and Home promise.
"""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from lab.environment import device_type

ROOT = Path(__file__).resolve().parent.parent


def _home() -> AppTest:
    """Home as people reach it: through app.py's navigation (pages never run on their own; see
    pages/_ui.py on Streamlit's legacy pages mode)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception
    return at


def test_app_routes_to_home():
    at = _home()
    assert at.title[0].value == "QLoRA Lab"
    assert any(m.label == "Device" and m.value == device_type().upper() for m in at.metric)
    assert any("ready" in s.value for s in at.success)


def test_home_shows_the_library_versions():
    at = _home()
    import torch

    assert any(f"`{torch.__version__}`" in m.value for m in at.markdown)


def _stopping_app() -> None:  # run by AppTest.from_function: its own source is the script
    import streamlit as st
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    from pages._stop import stop_page

    ctx = get_script_run_ctx()
    before = st.session_state.setdefault("registered", [])
    # which fragments of earlier runs are still runnable, before this run registers any
    st.session_state["runnable"] = [f for f in before if ctx.fragment_storage.contains(f)]
    if st.session_state.get("stop"):
        (stop_page if st.session_state.get("use_stop_page") else st.stop)()

    @st.fragment(run_every=600)
    def polling() -> None:
        st.write("polling")

    polling()
    before[:] = sorted(ctx.shared.new_fragment_ids.snapshot())


def test_a_page_stopped_early_leaves_no_polling_fragment_of_the_previous_run_runnable():
    """st.stop() skips Streamlit's end-of-run clearing of the fragment storage, so a run_every fragment of the run
    before stays runnable; its tick then drew into a place the shorter page no longer had, and the browser's app
    crashed to a blank page (pages/_stop.py). stop_page() forgets it as a run that ends does."""
    for use_stop_page, still_runnable in ((False, True), (True, False)):
        at = AppTest.from_function(_stopping_app, default_timeout=60).run()
        assert at.session_state["registered"] and not at.exception  # the polling fragment of run 1
        at.session_state["stop"], at.session_state["use_stop_page"] = True, use_stop_page
        at.run()  # stopped before the fragment: it is not registered again
        at.run()  # sees what run 2 left runnable
        assert bool(at.session_state["runnable"]) is still_runnable, use_stop_page
