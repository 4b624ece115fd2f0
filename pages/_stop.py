"""`stop_page()`: the pages' `st.stop()`, without leaving the previous run's `run_every` fragments runnable.

Streamlit 1.67 clears a session's fragment storage of fragments the run did not register only when the script
returns (`streamlit/runtime/scriptrunner/script_runner.py`: `_fragment_storage.clear(...)` follows `exec`, which
`st.stop()`'s StopException skips). A polling fragment of the previous run (the calculator's simulation, every
0.5 s) then stays runnable, and its auto-rerun tick, sent by the browser while this run ran, is not dropped
(`AppSession` drops ticks only for fragments no longer stored): it draws into the previous run's place in the page.
When this run stopped early and the page is shorter (a bad config.json uploaded while the previous one simulated),
that place is gone and the browser's app crashes to a blank page: "Bad delta path index 10 (should be between
[0, 6])" (reproduced at the 5th and the 9th try of two runs under load; it failed
`test_calculator_upload_and_bad_upload` on a quiet suite run).
"""

from __future__ import annotations

from typing import NoReturn

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx


def stop_page() -> NoReturn:
    """End this run here (`st.stop()`), forgetting the fragments it did not register, as a run that ends does."""
    ctx = get_script_run_ctx()
    if ctx is not None and not ctx.fragment_ids_this_run:  # a full run: a fragment's own stop keeps its siblings
        ctx.fragment_storage.clear(new_fragment_ids=ctx.shared.new_fragment_ids.snapshot())
    st.stop()
