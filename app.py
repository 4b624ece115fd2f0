"""QLoRA Lab entry point: routes to the pages and draws the shared sidebar. Nothing else."""

from pathlib import Path

import streamlit as st

from pages._legacy import leave_legacy_multipage_mode, paint_starting  # streamlit only: nothing heavy before the paint


def main() -> None:
    # A local favicon: a material icon here makes the browser fetch it from a font CDN (nothing shows offline).
    st.set_page_config(page_title="QLoRA Lab", page_icon=str(Path(__file__).parent / "assets" / "favicon.png"),
                       layout="wide")
    leave_legacy_multipage_mode()  # before the paint: a deep link opened meanwhile waits for the import below
    # The pages' helpers import torch, transformers, peft and bitsandbytes: on a fresh server the first visit
    # waits seconds for them (a blank page before). Paint a line first; later visits find them imported.
    starting = st.empty()
    paint_starting(starting)
    from pages._ui import PAGES, menu, report_activity, server_services, sidebar  # heavy: after the paint

    starting.empty()
    server_services()  # once per server: the training-queue watcher, preloading, the board of sessions
    home = PAGES[0]
    page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=p is home) for p in menu()])
    report_activity(page.title)
    sidebar()
    page.run()


# Streamlit runs this file as __main__ on every rerun. A simulation process (lab.estimate.pool) imports it first as
# __mp_main__, as multiprocessing imports any main script: there it must do nothing but import.
if __name__ == "__main__":
    main()
