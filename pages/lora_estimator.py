"""LoRA estimator: module-by-module LoRA parameter counts, equal to what peft's get_peft_model creates."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
from lab.estimate.lora import BIAS_CHOICES, estimate_lora, fused_qkv, packed_param_count, preset_targets
from lab.units import fmt_bytes, fmt_count
from lab.vocab import TARGET_PRESETS, describe
from pages._arch_ui import pick_architecture
from pages._stop import stop_page
from pages._ui import friendly_errors

CUSTOM = "custom"

st.title("LoRA estimator")
st.markdown(
    "How many parameters LoRA trains, **module by module**, for the Linear layers this model really has "
    "(a fused `qkv_proj`, biased projections and tied embeddings included). The counts equal what peft's "
    "`get_peft_model` creates — the test suite checks them against peft itself."
)

arch = pick_architecture()
if arch is None:
    stop_page()

names = arch.linear_names


c1, c2 = st.columns([4, 5])
preset = c1.segmented_control(
    "Preset", [*TARGET_PRESETS, CUSTOM], default="all-linear", key="preset", bind="query-params", required=True,
    help=describe(TARGET_PRESETS, markdown=True) + " · **custom**: pick the modules yourself.",
)
# A preset decides the modules; "custom" keeps the last choice (if this model has those names).
previous = st.session_state.get("modules")
current = [m for m in previous or [] if m in names]
if preset in TARGET_PRESETS or previous is None or (previous and not current):
    st.session_state["modules"] = preset_targets(arch, preset if preset in TARGET_PRESETS else "all-linear")
elif current != previous:
    st.session_state["modules"] = current
modules = c2.multiselect(
    "Target modules", names, key="modules", bind="query-params", disabled=preset != CUSTOM,
    help="Leaf names of the model's Linear layers (peft's target_modules): a name matches every layer whose "
         "full name ends with it. lm_head is allowed but no preset takes it. Choose the 'custom' preset to edit.",
)

fused = fused_qkv(modules)
if fused:
    st.info(f"On {arch.name}, q, k and v live in one fused layer (`{'`, `'.join(fused)}`): LoRA adapts the whole fused "
            "projection — q, k and v together — so 'q, v' costs what 'q, k, v' would.", icon=":material/info:")

r1, r2, r3, r4, r5 = st.columns(5)
r = r1.number_input("Rank r", 1, 10**9, 16, key="r", bind="query-params",
                    help="Inner dimension of the adapter: A is r × in, B is out × r. Parameters grow linearly with r. "
                         "It cannot exceed the width of the targeted layers.")
# alpha follows the 2·r rule of thumb until someone sets it to something else. No upper bound: any 2·r is a
# valid alpha (a bound below it made the widget reset alpha to its minimum, and alpha stopped following r).
previous_r = st.session_state.get("_alpha_for_r")
if "alpha" not in st.session_state or (previous_r is not None and st.session_state["alpha"] == 2.0 * previous_r):
    st.session_state["alpha"] = float(2 * r)
st.session_state["_alpha_for_r"] = r
alpha = r2.number_input("lora_alpha", 0.5, None, step=1.0, key="alpha", bind="query-params",
                        help="Scale numerator: the update is multiplied by alpha/r (or alpha/√r with rsLoRA). Rule of "
                             "thumb: 2·r — it follows r until you set another value.")
use_rslora = r3.checkbox(
    "rsLoRA",
    False,
    key="rslora",
    bind="query-params",
    help="Rank-stabilized LoRA: scale by alpha/√r instead of alpha/r, so higher ranks keep learning. Same count.",
)
use_dora = r4.checkbox(
    "DoRA",
    False,
    key="dora",
    bind="query-params",
    help="Weight-decomposed LoRA: adds a trainable magnitude vector (out_features) per adapted layer.",
)
bias = r5.selectbox("bias", list(BIAS_CHOICES), key="bias", bind="query-params",
                    help=" · ".join(f"**{k}**: {v}" for k, v in BIAS_CHOICES.items()))
lora_bias = st.checkbox(
    "lora_bias (a bias on lora_B)",
    False,
    key="lora_bias",
    disabled=use_dora,
    help="peft's lora_bias=True: adds a trainable bias of out_features to each lora_B (not with DoRA).",
)

est = None
with friendly_errors("The LoRA estimate"):
    est = estimate_lora(arch, int(r), float(alpha), modules, use_dora=use_dora, use_rslora=use_rslora, bias=bias,
                        lora_bias=lora_bias and not use_dora)
if est is None:
    stop_page()
narrow = [row for row in est.rows if int(r) > min(row.in_features, row.out_features)]
if narrow:
    width = min(min(row.in_features, row.out_features) for row in narrow)
    st.warning(
        f"r={int(r):,} is above the width of {', '.join(row.name for row in narrow)} (min(in, out) = {width:,}): "
        "peft still creates matrices of that size, but the update B·A cannot have a rank above the layer's "
        "width, so the extra parameters add nothing. The calculator refuses such a rank for training.",
        icon=":material/warning:",
    )

m1, m2, m3, m4 = st.columns(4)
m1.metric("Trainable parameters", fmt_count(est.trainable_params), help=f"{est.trainable_params:,} exactly")
m2.metric(
    "% of the model",
    f"{est.trainable_percent:.3f}%",
    help="trainable / (base parameters + new LoRA parameters), as peft prints it",
)
m3.metric(
    "Adapter file, fp32", fmt_bytes(est.adapter_bytes_fp32), help="adapter_model.safetensors: 4 bytes per parameter"
)
m4.metric("Adapter file, bf16", fmt_bytes(est.adapter_bytes_bf16), help="Saved in bf16: 2 bytes per parameter")

rows = [
    {"module": row.name, "in × out": f"{row.in_features} × {row.out_features}", "layers": str(row.count),
     "A (r × in)": f"{row.a_params:,}", "B (out × r)": f"{row.b_params:,}",
     "DoRA magnitude": f"{row.magnitude_params:,}", "biases": f"{row.lora_bias_params + row.unfrozen_bias_params:,}",
     "per layer": f"{row.per_layer:,}", "total": f"{row.total:,}"}
    for row in est.rows
]
blank = dict.fromkeys(rows[0] if rows else ["module", "total"], "")
if est.other_trainable_params:
    rows.append({**blank, "module": "other biases (bias='all')", "total": f"{est.other_trainable_params:,}"})
rows.append({**blank, "module": "TOTAL", "total": f"{est.trainable_params:,}"})
st.dataframe(rows, hide_index=True, width="stretch")

fig = go.Figure()
fig.add_bar(name="A (r × in)", x=[x.name for x in est.rows], y=[x.a_params * x.count for x in est.rows])
fig.add_bar(name="B (out × r)", x=[x.name for x in est.rows], y=[x.b_params * x.count for x in est.rows])
if use_dora or lora_bias or bias != "none":
    fig.add_bar(name="magnitude / biases", x=[x.name for x in est.rows],
                y=[(x.magnitude_params + x.lora_bias_params + x.unfrozen_bias_params) * x.count for x in est.rows])
fig.update_layout(
    barmode="stack", yaxis_title="parameters", height=340, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.2)
)
st.plotly_chart(fig, width="stretch")

st.subheader("The formula")
scale = r"\frac{\alpha}{\sqrt{r}}" if use_rslora else r"\frac{\alpha}{r}"
st.latex(
    rf"h = W x + {scale}\, B A x, \qquad A \in \mathbb{{R}}^{{r \times \text{{in}}}},\; B \in "
    rf"\mathbb{{R}}^{{\text{{out}} \times r}}"
)
st.latex(r"\#\text{params} = \sum_{\text{targets}} \text{layers} \times \big(r\cdot\text{in} + \text{out}\cdot r"
         + (r" + \text{out}_{\text{DoRA}}" if use_dora else "") + r"\big)")
st.caption(f"scale = {est.scale:.4g} (alpha={est.alpha:g}, r={est.r}{', rsLoRA' if use_rslora else ''}). "
           "B starts at zero, so the adapted model starts exactly equal to the base model.")

with st.expander("Why peft once printed 'all params: 1.8B' for a 3B model in 4-bit"):
    packed = packed_param_count(arch)
    st.markdown(
        f"bitsandbytes stores two 4-bit weights in one `uint8` element, so a quantized Linear's `weight.numel()` "
        f"is half its real parameter count. Counting `p.numel()` over the 4-bit **{arch.name}** gives "
        f"**{packed:,}** ({fmt_count(packed)}) instead of **{arch.params_total:,}** ({fmt_count(arch.params_total)}); "
        "embeddings, norms and lm_head are not quantized and count in full. For Llama-3.2-3B that is the "
        "'all params: 1.8B' seen in older tutorials. peft's `print_trainable_parameters()` now doubles `Params4bit` "
        "counts back, and this page uses the true counts."
    )

st.subheader("Copy as code")
st.code("from peft import LoraConfig, get_peft_model\n\n"
        f"lora_config = {est.lora_config_code()}\nmodel = get_peft_model(model, lora_config)\n"
        f"model.print_trainable_parameters()  # trainable params: {est.trainable_params:,}",
        language="python")
