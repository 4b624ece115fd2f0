"""QLoRA Lab entry point: routes to the pages and draws the shared sidebar. Nothing else."""

import streamlit as st

from pages._ui import PAGES, sidebar

st.set_page_config(page_title="QLoRA Lab", page_icon=":material/science:", layout="wide")
HOME = PAGES[0]
page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=p is HOME) for p in PAGES])
sidebar()
page.run()
