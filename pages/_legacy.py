"""Streamlit's legacy pages mode, left at once (imports only streamlit: app.py calls it before any heavy import)."""

from __future__ import annotations

import sys

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

# What a fresh server's first visit reads while torch and friends load (app.py, pages/_starting.py).
STARTING = "Starting QLoRA Lab: loading PyTorch, transformers and bitsandbytes (only after a server start)…"


def paint_starting(where=st) -> None:
    """Say so while the heavy helpers (pages._ui) are not imported yet: only a fresh server's first visit."""
    if "pages._ui" not in sys.modules:
        where.info(STARTING, icon=":material/hourglass_top:")


def leave_legacy_multipage_mode() -> None:
    """The one workaround for Streamlit's legacy pages mode (nothing else in the app or the tests
    needs to know about it).

    Streamlit treats a `pages/` folder beside the entry script as a legacy (v1) multipage app
    until `st.navigation` runs once. If a fresh server's first request is a deep link such as
    /loading_lab, that page would run on its own (no app.py, no shared sidebar, an automatic menu
    listing every file) for the server's whole life. The folder keeps its name (the project's
    layout names it), so instead: every page imports pages/_ui.py, which calls this: it switches to app.py's
    navigation and reruns; the same URL then resolves through `st.navigation`. app.py calls it too, before it
    paints "Starting…" and imports the heavy helpers: a deep link opened meanwhile then runs app.py and waits
    for that import, instead of running its page in legacy mode beside it (two threads importing the same
    modules in different orders: Python handed one of them a half-imported pages._ui)."""
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
