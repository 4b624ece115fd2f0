"""QLoRA Lab entry point: routes to the pages and draws the shared sidebar. Nothing else."""

import streamlit as st

from pages._ui import available_pages, sidebar

st.set_page_config(page_title="QLoRA Lab", page_icon=":material/science:", layout="wide")
page = st.navigation([st.Page(p.path, title=p.title, icon=p.icon, default=p.path == "pages/home.py") for p in available_pages()])
sidebar()
page.run()
