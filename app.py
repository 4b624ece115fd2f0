"""QLoRA Lab entry point: routes to the pages and draws the shared sidebar. Nothing else."""

import streamlit as st

from pages._ui import PAGES, menu, report_activity, server_services, sidebar

st.set_page_config(page_title="QLoRA Lab", page_icon=":material/science:", layout="wide")
server_services()  # once per server: the training-queue watcher, preloading, the board of sessions
HOME = PAGES[0]
page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=p is HOME) for p in menu()])
report_activity(page.title)
sidebar()
page.run()
