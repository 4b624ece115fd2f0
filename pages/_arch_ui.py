"""The model picker both architecture pages share: a catalog name, the embedded model, an
uploaded config.json, or a path / Hub id. The choice lives in the URL (`?model=...`)."""

from __future__ import annotations

import streamlit as st

from lab import policy
from lab.models.architecture import Architecture
from lab.models.catalog import EMBEDDED, catalog_names
from lab.models.reader import read_architecture, read_architecture_json
from lab.units import fmt_count
from pages._ui import friendly_errors

UPLOAD = "Upload a config.json…"
OTHER = "Folder, file or Hub id…"
HUB_ONLY = "Hub id…"  # public mode: no server paths (lab.policy)
MODEL_HELP = ("The architecture to compute for. Catalog entries are config.json files written from the published "
              "architectures; 'embedded' is the offline SmolLM2-135M-Instruct; or upload any model's config.json. "
              "Only the config is read: the model is built on PyTorch's meta device, without weights.")


def model_options() -> list[str]:
    return [EMBEDDED, *catalog_names(), UPLOAD, HUB_ONLY if policy.public_mode() else OTHER]


def pick_architecture(default: str = "Llama-3.2-3B") -> Architecture | None:
    """Draw the picker; return the architecture, or None after showing an st.error."""
    options = model_options()
    choice = st.selectbox("Model", options, index=options.index(default) if default in options else 0,
                          key="model", bind="query-params", help=MODEL_HELP)
    arch = None
    with friendly_errors("Reading the architecture"):
        if choice == UPLOAD:
            upload = st.file_uploader("config.json", type=["json"], key="config_upload",
                                      help="A transformers config.json (it must have a 'model_type').")
            if upload is None:
                st.info("Upload a model's config.json to compute for it.", icon=":material/upload_file:")
                return None
            arch = read_architecture_json(upload.getvalue(), upload.name)
        elif choice == HUB_ONLY:
            spec = st.text_input("Hub id", key="source", bind="query-params", placeholder="owner/name",
                                 help="owner/name on the Hugging Face Hub. Only its config.json is fetched; models "
                                      f"above {fmt_count(policy.limits().max_params)} parameters are refused unless "
                                      "allow-listed.")
            if not spec:
                return None
            arch = read_architecture(spec)
        elif choice == OTHER:
            spec = st.text_input("Folder, config.json path or Hub id", key="source", bind="query-params",
                                 help="A local model folder or config.json file, or owner/name on the Hugging Face Hub "
                                      "(needs network; offline, use the catalog or upload a config).")
            if not spec:
                return None
            arch = read_architecture(spec)
        else:
            arch = read_architecture(choice)
    if arch is not None:
        tied = "tied" if arch.tie_word_embeddings else "untied"
        st.caption(
            f"**{arch.name}** · `{arch.model_type}` ({arch.model_class}) · {fmt_count(arch.params_total)} parameters "
            f"({arch.params_total:,}) · {arch.num_layers} layers · hidden {arch.hidden_size} · "
            f"{arch.num_attention_heads} heads / {arch.num_kv_heads} KV heads · vocab {arch.vocab_size:,} · "
            f"{tied} embeddings · ships in {arch.config_dtype}"
        )
    return arch


def architecture_table(arch: Architecture) -> None:
    """Every component the model really has, read from the meta model."""
    rows = arch.summary_rows()
    st.dataframe(
        [{**r, "params": f"{r['params']:,}"} for r in rows],
        hide_index=True,
        width="stretch",
        column_config={
            "component": st.column_config.TextColumn(
                "component", help="Leaf module name (what LoRA's target_modules matches)"
            ),
            "shape": st.column_config.TextColumn("in → out", help="in_features → out_features, or the tensor shape"),
            "count": st.column_config.NumberColumn("count", help="How many such modules the model has"),
            "quantized": st.column_config.CheckboxColumn(
                "bnb quantizes",
                help="Would BitsAndBytesConfig replace it (transformers' own skip rule: lm_head and tied weights stay)",
            ),
        },
    )
