"""Precision & memory calculator: weights as bitsandbytes stores them, training memory term by
term, KV cache, GPU fit verdicts and the inverse question. Every setting lives in the URL."""

from __future__ import annotations

from dataclasses import replace

import plotly.graph_objects as go
import streamlit as st
import torch

from lab.estimate.gpus import CUDA_CONTEXT_BYTES, GPUS, fit_table, get_gpu, this_machine
from lab.estimate.inference import kv_cache_bytes
from lab.estimate.inverse import INVERSE_KNOBS, max_fitting, memory_vs_seq_len
from lab.estimate.lora import preset_targets
from lab.estimate.training import TrainingSettings, estimate_training
from lab.estimate.weights import estimate_weights
from lab.models.precision import bnb_config_code
from lab.units import fmt_bytes, fmt_count
from lab.vocab import DTYPES, METHODS, OPTIMIZERS, PRECISIONS, TARGET_PRESETS, describe
from pages._arch_ui import architecture_table, pick_architecture
from pages._ui import cached_environment, friendly_errors

GB = 1e9
DTYPE_HELP = ("dtype of everything bitsandbytes leaves unquantized (embeddings, norms, lm_head, biases) and of the "
              "compute. auto = the config's torch_dtype, what the checkpoint ships in.")
COLORS = {"quantized Linear weights": "#4C78A8", "quantization constants": "#E45756", "unquantized Linear weights": "#72B7B2",
          "embeddings": "#F58518", "lm_head": "#EECA3B", "norms": "#B279A2", "biases": "#9D755D",
          "other parameters": "#BAB0AC", "buffers (rotary tables)": "#54A24B"}

st.title("Precision & memory calculator")
st.markdown(
    "What a model takes **before you download it**: its weights at every precision as bitsandbytes really "
    "stores them, what training adds, and which GPU it fits. The architecture is read from the model itself "
    "(built on PyTorch's meta device), so fused layers, biases and tied embeddings count right."
)

arch = pick_architecture()
if arch is None:
    st.stop()

with st.expander("Architecture: every module, read from the model", expanded=False):
    architecture_table(arch)

# ----------------------------------------------------------------------------------- weights
st.header("Weights")
c1, c2 = st.columns([3, 1])
precision = c1.segmented_control(
    "Precision", list(PRECISIONS), default="nf4-dq", key="precision", bind="query-params", required=True,
    help=describe(PRECISIONS, markdown=True),
)
dtype = c2.selectbox("Unquantized dtype", ["auto", *DTYPES], key="dtype", bind="query-params",
                     help=DTYPE_HELP, disabled=not PRECISIONS[precision].quantized)
w = None
with friendly_errors("The weights estimate"):
    w = estimate_weights(arch, precision, dtype)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("True bytes", fmt_bytes(w.weights_bytes), help="Every tensor the loaded model holds, quantization constants included.")
    m2.metric("get_memory_footprint()", fmt_bytes(w.hf_footprint_bytes),
              delta=fmt_bytes(w.hf_footprint_bytes - w.weights_bytes) if w.quant_constants_bytes else None,
              delta_color="off", help="What transformers reports: parameters and buffers only. It counts a packed "
                                      "4-bit weight as its uint8 storage and misses absmax, code tables and int8 row scales.")
    m3.metric("Tutorial figure", fmt_bytes(w.naive_bytes), help="params × bits / 8 — assumes every parameter is "
              "quantized, ignores embeddings/lm_head/norms left in 16-bit and all constants.")
    m4.metric("Quantized params", f"{100 * w.quantized_params / w.params_total:.1f}%",
              help=f"{w.quantized_params:,} of {w.params_total:,} parameters sit in Linear layers bitsandbytes quantizes.")
    st.dataframe(
        [{"component": c.name, "params": f"{c.params:,}" if c.params else "", "stored as": c.storage,
          "true bytes": fmt_bytes(c.bytes), "footprint counts": fmt_bytes(c.hf_bytes), "formula": c.formula}
         for c in w.components],
        hide_index=True, width="stretch",
    )
    if PRECISIONS[precision].four_bit:
        st.latex(r"\text{4-bit bytes} = \underbrace{\lceil n/2\rceil}_{\text{2 weights per byte}}"
                 r" + \underbrace{4\lceil n/64\rceil}_{\text{fp32 absmax}}\;"
                 r"\xrightarrow{\text{double quant}}\; \lceil n/64\rceil + 4\left\lceil \tfrac{n/64}{256}\right\rceil")
        st.caption(
            "4-bit: 0.5 byte per weight + an fp32 absmax per 64-weight block (0.5 bit/weight); double quantization "
            "stores those absmax in 8 bits with an fp32 constant per 256 blocks (≈0.127 bit/weight). bitsandbytes also "
            "keeps a 16-entry code table per layer (and a 256-entry one with double quant). "
            f"**CPU vs CUDA:** on a CPU with AVX512-BF16, the first inference forward repacks each layer for the fused "
            f"CPU kernel and keeps absmax as bf16 (nested constants dropped): then the model holds "
            f"{fmt_bytes(w.cpu_packed_bytes)}. CUDA keeps the layout above."
        )
    elif precision == "int8":
        st.latex(r"\text{int8 bytes} = n + 4\cdot\text{out\_features}\quad(\text{int8 weight} + \text{fp32 row scale SCB})")

    rows = [estimate_weights(arch, p, dtype) for p in PRECISIONS]
    names = [c.name for r in rows for c in r.components]
    fig = go.Figure()
    for comp in dict.fromkeys(names):
        fig.add_bar(name=comp, x=[PRECISIONS[r.precision].label for r in rows],
                    y=[sum(c.bytes for c in r.components if c.name == comp) / GB for r in rows],
                    marker_color=COLORS.get(comp))
    fig.add_scatter(name="get_memory_footprint()", x=[PRECISIONS[r.precision].label for r in rows],
                    y=[r.hf_footprint_bytes / GB for r in rows], mode="markers", marker=dict(symbol="line-ew-open", size=28, color="black"))
    fig.update_layout(barmode="stack", yaxis_title="GB", height=380, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.15))
    st.plotly_chart(fig, width="stretch")

with st.expander("Worked examples: where the tutorial figures come from (and go wrong)"):
    st.markdown(
        "- **Llama-3.2-3B** `get_memory_footprint()`: **12.9 GB** fp32, **3.6 GB** 8-bit, **2.2 GB** 4-bit "
        "(rest in fp16) — pick Llama-3.2-3B above to reproduce them. The 4-bit figure is not 3.2B × 0.5 B = 1.6 GB: "
        "the 394M-parameter embedding (tied to lm_head) stays 16-bit, and the true bytes add ~40 MB of absmax "
        "with double quant (~170 MB without) that the footprint leaves out.\n"
        "- **Qwen2.5-0.5B**, 494,032,768 parameters: tutorials quote '≈0.23 GB at 4-bit' (all 494M × 0.5 B). But "
        "136M of them are the (tied) embedding, which bitsandbytes never quantizes: it alone is 272 MB in bf16. "
        "The real 4-bit model is ≈0.46 GB — twice the tutorial figure.\n"
        "- **'FP16 would use ~0.92 GB'** for Qwen2.5-0.5B is 494M × 2 B in GiB (0.92 GiB = 0.99 GB): check which unit a "
        "figure uses. This lab uses GB = 10⁹ bytes throughout."
    )

# ----------------------------------------------------------------------------------- training
st.header("Training memory")
t1, t2, t3, t4 = st.columns(4)
method = t1.radio("Method", list(METHODS), index=1, key="method", bind="query-params", horizontal=True,
                  help=describe(METHODS, markdown=True))
batch_size = t2.number_input("Batch size", 1, 4096, 4, key="batch", bind="query-params", help="Per-device batch size (sequences per step).")
seq_len = t3.number_input("Sequence length", 16, 1_048_576, 1024, step=256, key="seq", bind="query-params",
                          help="Tokens per sequence: activations and logits grow linearly with it.")
optimizer = t4.selectbox("Optimizer", list(OPTIMIZERS), index=list(OPTIMIZERS).index("paged_adamw_8bit"), key="optim",
                         bind="query-params", help=describe(OPTIMIZERS, markdown=True))
u1, u2, u3 = st.columns([1, 1, 2])
gc = u1.checkbox("Gradient checkpointing", True, key="gc", bind="query-params",
                 help="Keep only each layer's input and recompute the rest in backward: far less activation memory, ~30% slower.")
r = u2.number_input("LoRA rank r", 1, 4096, 16, key="r", bind="query-params", disabled=method == "full",
                    help="Rank of the adapters (LoRA/QLoRA). See the LoRA estimator for module-by-module counts.")
preset = u3.segmented_control("LoRA targets", list(TARGET_PRESETS), default="all-linear", key="targets", bind="query-params",
                              required=True, disabled=method == "full",
                              help=describe(TARGET_PRESETS, markdown=True))
settings = TrainingSettings(method=method, precision=precision if method == "qlora" and PRECISIONS[precision].quantized else None,
                            dtype=dtype, batch_size=int(batch_size), seq_len=int(seq_len), grad_checkpointing=gc,
                            optimizer=optimizer, r=int(r), targets=tuple(preset_targets(arch, preset)))
est = None
with friendly_errors("The training estimate"):
    est = estimate_training(arch, settings)
    labels = {"weights": "Weights", "adapter": "Trainable (LoRA) params", "gradients": "Gradients",
              "optimizer": "Optimizer states", "activations": "Activations", "logits": "Logits + loss", "cuda_context": "CUDA context"}
    st.dataframe([{"term": labels.get(k, k), "bytes": fmt_bytes(v), "formula": est.formulas[k]} for k, v in est.components.items()],
                 hide_index=True, width="stretch")
    st.metric("Estimated peak", fmt_bytes(est.total_bytes),
              help=f"{est.trainable_params:,} trainable parameters. Allowance for the CUDA context: {fmt_bytes(CUDA_CONTEXT_BYTES)}.")
    st.latex(r"M = W + P_{\text{train}}(b_p + b_g + b_{\text{opt}}) + b\,s\,\big(L\,h\,e \;[\text{checkpointed}]"
             r"\;\text{or}\; L\,e\,(4h + 2q + 2kv + 4i)\big) + b\,s\,V(e + 8) + C_{\text{CUDA}}")
    for note in est.notes:
        st.caption(note)

# ----------------------------------------------------------------------------------- KV cache
st.header("KV cache for inference")
CONTEXTS = [2**k for k in range(8, 21)]  # 256 … 1,048,576 tokens
context = st.select_slider("Context (tokens)", CONTEXTS, value=4096, key="context", bind="query-params",
                           help="Prompt + generated tokens held in the cache, per sequence.")
if arch.max_position_embeddings and context > arch.max_position_embeddings:
    st.warning(f"{arch.name} was trained for at most {arch.max_position_embeddings:,} positions; "
               f"{context:,} tokens is beyond what it supports.", icon=":material/warning:")
kv = kv_cache_bytes(arch, int(context), 1, dtype)
st.metric("KV cache (batch 1)", fmt_bytes(kv), help="2 (K and V) × layers × KV heads × head_dim × tokens × bytes")
st.latex(rf"2 \times {arch.num_layers} \times {arch.num_kv_heads} \times {arch.head_dim} \times {int(context):,} \times e = "
         rf"\text{{{fmt_bytes(kv)}}}")

# ----------------------------------------------------------------------------------- fit
st.header("Does it fit?")
if est is not None:
    machine = this_machine(cached_environment())
    inference = (w.weights_bytes if w is not None else 0) + kv + CUDA_CONTEXT_BYTES
    fits = fit_table(est.total_bytes, (*GPUS, machine))
    infer = {f["gpu"]: f["verdict"] for f in fit_table(inference, (*GPUS, machine))}
    icon = {"fits": "fits", "tight": "tight", "does not fit": "does not fit"}
    st.dataframe(
        [{"GPU": f["gpu"], "memory": fmt_bytes(f["memory_bytes"]), f"training ({method})": icon[f["verdict"]],
          "used": f"{f['used_percent']:.0f}%", "inference": icon[infer[f["gpu"]]], "note": f["note"]} for f in fits],
        hide_index=True, width="stretch",
    )
    st.caption("Fits: under 90% of the device's memory; tight: 90–100% (fragmentation and spikes may still OOM). "
               "Inference = weights + KV cache at the chosen context + CUDA context. On this CPU machine the "
               "'this machine' row compares with RAM.")

    # stacked bars per method × precision
    combos = [("full", None), ("lora", None), ("qlora", "int8"), ("qlora", "nf4"), ("qlora", "nf4-dq")]
    fig = go.Figure()
    ests = []
    for m_, p_ in combos:
        with friendly_errors("Comparison"):
            ests.append((f"{m_.upper()}" + (f" {p_}" if p_ else ""), estimate_training(arch, replace(settings, method=m_, precision=p_))))
    for key in est.components:
        fig.add_bar(name=labels.get(key, key), x=[n for n, _ in ests], y=[e.components[key] / GB for _, e in ests])
    fig.update_layout(barmode="stack", yaxis_title="GB", height=380, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.15))
    st.plotly_chart(fig, width="stretch")

# ----------------------------------------------------------------------------------- inverse
st.header("The inverse question: what is the most that fits?")
g1, g2 = st.columns(2)
gpu_name = g1.selectbox("GPU", [g.name for g in GPUS], index=0, key="gpu", bind="query-params",
                        help="Usable memory as torch reports it (GB = 10⁹ bytes). The sequence length search stops at the "
                             "model's max_position_embeddings; the rank search at its widest layer.")
if est is not None:
    gpu = get_gpu(gpu_name)
    with friendly_errors("The inverse question"):
        knobs = [k for k in INVERSE_KNOBS if not (k == "r" and method == "full")]
        best = {k: max_fitting(arch, gpu.memory_bytes, k, settings) for k in knobs}
        cols = st.columns(len(knobs))
        for col, k in zip(cols, knobs, strict=True):
            col.metric(f"max {k.replace('_', ' ')}", f"{best[k]:,}" if best[k] else "none fits",
                       help=INVERSE_KNOBS[k] + " Other settings as above.")
        top = max(int(seq_len) * 4, best.get("seq_len", 0) * 2, 2048)
        top = min(top, int(arch.max_position_embeddings or top) * 2)
        lens = sorted({max(16, int(top * i / 24)) for i in range(1, 25)} | {int(seq_len)})
        curve = memory_vs_seq_len(arch, settings, lens)
        fig = go.Figure()
        for key in est.components:
            fig.add_scatter(x=lens, y=[row[key] / GB for row in curve], name=labels.get(key, key), stackgroup="one", mode="lines")
        fig.add_hline(y=gpu.memory_bytes / GB, line_dash="dash", line_color="red", annotation_text=f"{gpu.name} limit")
        fig.update_layout(xaxis_title="sequence length (tokens)", yaxis_title="GB", height=400, margin=dict(t=30, b=0),
                          legend=dict(orientation="h", y=-0.2))
        st.plotly_chart(fig, width="stretch")
        cross = next((row["seq_len"] for row in curve if row["activations"] + row["logits"] > row["weights"]), None)
        if cross:
            st.caption(f"From about **{cross:,} tokens** on, activations and logits outweigh the weights: "
                       "beyond that point a 4-bit base saves less than a shorter sequence or checkpointing would.")

# ----------------------------------------------------------------------------------- code
st.header("Copy as code")
code = ["import torch", "from transformers import AutoModelForCausalLM, BitsAndBytesConfig"]
if method != "full":
    code[-1] += "\nfrom peft import LoraConfig"
model_id = arch.name if "/" in arch.name else f"<hub id of {arch.name}>"
if PRECISIONS[precision].quantized:
    code += ["", f"bnb_config = {bnb_config_code(precision, compute=torch.bfloat16)}",
             f'model = AutoModelForCausalLM.from_pretrained("{model_id}", quantization_config=bnb_config, device_map="auto")']
else:
    code += ["", f'model = AutoModelForCausalLM.from_pretrained("{model_id}", dtype=torch.{DTYPES[precision].torch_name}, device_map="auto")']
if est is not None and est.lora is not None:
    code += ["", f"lora_config = {est.lora.lora_config_code()}"]
code += ["", f"# training: per_device_train_batch_size={int(batch_size)}, max_length={int(seq_len)}, "
             f"gradient_checkpointing={gc}, optim=\"{optimizer if optimizer != 'adamw_8bit' else 'adamw_bnb_8bit'}\"",
         f"# estimated peak: {fmt_bytes(est.total_bytes) if est else '—'}; weights: {fmt_bytes(w.weights_bytes) if w is not None else '—'}"]
st.code("\n".join(code), language="python")
st.caption(f"This page's settings are in the URL: share it to show the same configuration. {fmt_count(arch.params_total)} parameters.")
