"""The model picker both architecture pages share: a catalog name, the embedded model, an
uploaded config.json, or a path / Hub id. The choice lives in the URL (`?model=...`)."""

from __future__ import annotations

import streamlit as st

from lab import policy
from lab.errors import LabError
from lab.estimate.warmup import CALCULATOR_MODEL
from lab.models.architecture import Architecture
from lab.models.catalog import EMBEDDED, catalog_names
from lab.models.reader import read_architecture, read_architecture_json
from lab.models.sources import is_hub_id
from lab.units import fmt_count
from pages._ui import friendly_errors, get_task, poll_task, start_task, upload_limit_mb

UPLOAD = "Upload a config.json…"
OTHER = "Folder, file or Hub id…"
HUB_ONLY = "Hub id…"  # public mode: no server paths (lab.policy)
CHECK_TASK, CHECKED = "arch_check", "arch_checked"  # session keys: the Hub check running, the last one's result
MODEL_HELP = ("The architecture to compute for. Catalog entries are config.json files written from the published "
              "architectures; 'embedded' is the offline SmolLM2-135M-Instruct; or upload any model's config.json. "
              "Only the config is read: the model is built on PyTorch's meta device, without weights.")


def model_options() -> list[str]:
    return [EMBEDDED, *catalog_names(), UPLOAD, HUB_ONLY if policy.public_mode() else OTHER]


def pick_architecture(default: str = CALCULATOR_MODEL) -> Architecture | None:
    """Draw the picker; return the architecture, or None after showing an st.error."""
    options = model_options()
    choice = st.selectbox("Model", options, index=options.index(default) if default in options else 0,
                          key="model", bind="query-params", help=MODEL_HELP)
    arch = None
    with friendly_errors("Reading the architecture"):
        if choice == UPLOAD:
            upload = st.file_uploader("config.json", type=["json"], key="config_upload",
                                      max_upload_size=upload_limit_mb(policy.limits().max_config_bytes),
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
            arch = _read_typed(spec)
        elif choice == OTHER:
            spec = st.text_input("Folder, config.json path or Hub id", key="source", bind="query-params",
                                 help="A local model folder or config.json file, or owner/name on the Hugging Face Hub "
                                      "(needs network; offline, use the catalog or upload a config).")
            if not spec:
                return None
            arch = _read_typed(spec)
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


def _read_typed(spec: str) -> Architecture | None:
    """A model someone typed. A path is read at once; a Hub id is checked off the script thread (the Hub may
    take seconds to answer or to fail) while the page says "Checking…" where the answer will be, so the
    previous input's error never stays on screen for the new one. None while the check runs."""
    if not is_hub_id(spec):
        return read_architecture(spec)
    checked = st.session_state.get(CHECKED)
    if checked is not None and checked[0] == spec:
        if isinstance(checked[1], str):
            raise LabError(checked[1])
        return checked[1]
    task = get_task(CHECK_TASK)
    if task is None or task.name != spec:
        if task is not None:
            task.cancel()  # an input already replaced: its answer is not wanted
        start_task(CHECK_TASK, _check, spec).name = spec
    poll_task(CHECK_TASK, lambda t: st.info(f"Checking {t.name}…", icon=":material/hourglass_top:"), _keep_check,
              every=0.3)
    return None


def _check(spec: str, report=None, cancel=None) -> Architecture:
    """The Hub check, in a worker thread (`report`/`cancel`: lab.tasks.BackgroundTask's hooks)."""
    return read_architecture(spec)


def _keep_check(task) -> None:
    st.session_state[CHECKED] = (task.name, task.result if task.status == "done" else task.error or "Check failed.")


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
