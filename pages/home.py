"""Home: what the lab is for, the machine it runs on, and a card per page."""

import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab import policy
from lab.units import fmt_bytes
from lab.vocab import COMPUTE, DTYPE_CHOICES
from pages._ui import PAGES, cached_environment

st.title("QLoRA Lab")
st.markdown(
    "See, with real numbers from real models, what **4-bit quantization** and **LoRA adapters** cost "
    "and buy. Every figure here is computed from the model's own architecture or measured on this "
    "machine — not copied from a tutorial."
)

env = cached_environment()
st.subheader("This machine")
c1, c2, c3 = st.columns(3)
c1.metric("Device", env["device"].upper(), help=env["device_name"])
if env["gpus"]:
    g = env["gpus"][0]
    c2.metric("GPU memory free", fmt_bytes(g["free_bytes"]), help=f"{g['name']}, {fmt_bytes(g['total_bytes'])} total")
else:
    c2.metric("RAM free", fmt_bytes(env["ram_available_bytes"]), help=f"{fmt_bytes(env['ram_total_bytes'])} total")
c3.metric("Compute dtype", env["compute_dtype"], help=DTYPE_CHOICES[COMPUTE].help)
st.caption(env["device_name"])

with st.expander("Library versions", expanded=True):
    st.markdown(" · ".join(f"**{lib}** `{v or 'not installed'}`" for lib, v in env["versions"].items()))

if env["embedded_model_ready"]:
    # Public mode names no server path (the server's folders are nobody's business in the room).
    where = "" if policy.public_mode() else f" at `{env['embedded_model_path']}`"
    st.success(f"Embedded model SmolLM2-135M-Instruct is ready{where}.", icon=":material/check_circle:")
else:
    st.warning(
        "The embedded model is not prepared yet. Run `make setup` or `python -m lab prepare`.",
        icon=":material/warning:",
    )

st.subheader("Pages")
cols = st.columns(2)
for i, page in enumerate(PAGES[1:]):  # every page but this one
    with cols[i % 2].container(border=True):
        st.page_link(page.path, label=page.title, icon=page.icon)
        st.caption(page.blurb)
