"""Precision & memory calculator: weights as bitsandbytes stores them, then the training step and
generation *simulated* (lab.estimate.simulate) with the formula beside as the explanation, the GPU
verdict, more than one GPU, the inverse question. Every setting lives in the URL."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from lab.errors import LabError
from lab.estimate import explain
from lab.estimate.gpus import (
    CUDA_CONTEXT_BYTES,
    CUDA_CONTEXT_SOURCE,
    FRAGMENTATION,
    FRAGMENTATION_SOURCE,
    GPUS,
    UNITS_NOTE,
    get_gpu,
    gpu_verdict,
    this_machine,
)
from lab.estimate.inference import kv_cache_bytes
from lab.estimate.inverse import INVERSE_KNOBS, solve_all
from lab.estimate.parallel import per_gpu_peak, smallest_fitting
from lab.estimate.simulate import InferenceSettings, is_cached, resolve_recipe, simulate_page
from lab.estimate.snippet import training_code
from lab.estimate.training import TrainingSettings, estimate_training
from lab.estimate.weights import estimate_weights
from lab.units import fmt_bytes, fmt_count
from lab.vocab import (
    ADAPTER_DTYPES,
    ATTENTION,
    DTYPES,
    KBIT_UPCAST,
    LAUNCH_MODES,
    LOSSES,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    TARGET_PRESETS,
    describe,
)
from pages import _speed
from pages._arch_ui import architecture_table, pick_architecture
from pages._ui import cached_environment, friendly_errors, get_task, poll_task, start_task, task_running

GB = 1e9
BIG = 10**9  # widget bounds wide enough that any URL value reaches the lab, which says what is wrong with it
HELP = {name: f.metadata["help"] for name, f in TrainingSettings.__dataclass_fields__.items()}
DTYPE_HELP = ("dtype of everything bitsandbytes leaves unquantized (embeddings, norms, lm_head, biases) and of the "
              "compute. auto = the config's torch_dtype, what the checkpoint ships in.")
COLORS = {
    "quantized Linear weights": "#4C78A8",
    "quantization constants": "#E45756",
    "unquantized Linear weights": "#72B7B2",
    "embeddings": "#F58518",
    "lm_head": "#EECA3B",
    "norms": "#B279A2",
    "biases": "#9D755D",
    "other parameters": "#BAB0AC",
    "buffers (rotary tables)": "#54A24B",
}
CATEGORY_COLORS = {"weights": "#4C78A8", "adapters": "#F58518", "gradients": "#E45756", "optimizer": "#72B7B2",
                   "activations": "#54A24B", "temporaries": "#B279A2", "kv_cache": "#EECA3B"}
PHASE_COLORS = {"before the step": "#888888", "forward": "#4C78A8", "backward": "#E45756", "optimizer step": "#54A24B",
                "prefill": "#4C78A8", "decode": "#F58518"}

st.title("Precision & memory calculator")
st.markdown(
    "What a model takes **before you download it**: its weights at every precision as bitsandbytes really "
    "stores them, and the peak of a training step and of generation — **simulated**: the lab builds the model "
    "from its config, applies the Training page's recipe and runs forward, backward and the optimizer step on "
    "fake tensors (shapes, no data), counting every byte."
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
    m1.metric(
        "True bytes",
        fmt_bytes(w.weights_bytes),
        help="Every tensor the loaded model holds, quantization constants included.",
    )
    m2.metric(
        "get_memory_footprint()",
        fmt_bytes(w.hf_footprint_bytes),
        delta=fmt_bytes(w.hf_footprint_bytes - w.weights_bytes) if w.quant_constants_bytes else None,
        delta_color="off",
        help="What transformers reports: parameters and buffers only. It counts a packed "
        "4-bit weight as its uint8 storage and misses absmax, code tables and int8 row scales.",
    )
    m3.metric("Tutorial figure", fmt_bytes(w.naive_bytes), help="params × bits / 8 — assumes every parameter is "
              "quantized, ignores embeddings/lm_head/norms left in 16-bit and all constants.")
    m4.metric(
        "Quantized params",
        f"{100 * w.quantized_params / w.params_total:.1f}%",
        help=f"{w.quantized_params:,} of {w.params_total:,} parameters sit in Linear layers bitsandbytes quantizes.",
    )
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
        st.latex(
            r"\text{int8 bytes} = n + 4\cdot\text{out\_features}\quad(\text{int8 weight} + \text{fp32 row scale SCB})"
        )

    rows = [estimate_weights(arch, p, dtype) for p in PRECISIONS]
    fig = go.Figure()
    for comp in dict.fromkeys(c.name for r in rows for c in r.components):
        fig.add_bar(name=comp, x=[PRECISIONS[r.precision].label for r in rows],
                    y=[sum(c.bytes for c in r.components if c.name == comp) / GB for r in rows],
                    marker_color=COLORS.get(comp))
    fig.add_scatter(
        name="get_memory_footprint()",
        x=[PRECISIONS[r.precision].label for r in rows],
        y=[r.hf_footprint_bytes / GB for r in rows],
        mode="markers",
        marker=dict(symbol="line-ew-open", size=28, color="black"),
    )
    fig.update_layout(
        barmode="stack", yaxis_title="GB", height=380, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.15)
    )
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
        "- **'FP16 would use ~0.92 GB'** for Qwen2.5-0.5B is 494M × 2 B in GiB (0.92 GiB = 0.99 GB): check which "
        "unit a figure uses. This lab uses GB = 10⁹ bytes throughout."
    )

# ----------------------------------------------------------------------------------- settings
st.header("Training step and generation — simulated")
t1, t2, t3, t4 = st.columns(4)
method = t1.radio("Method", list(METHODS), index=2, key="method", bind="query-params", horizontal=True,
                  help=describe(METHODS, markdown=True) + " · The base is loaded at the precision chosen above.")
batch_size = t2.number_input("Batch size", 1, BIG, 1, key="batch", bind="query-params", help=HELP["batch_size"])
seq_len = t3.number_input("Sequence length", 1, BIG, 1024, step=256, key="seq", bind="query-params",
                          help=HELP["seq_len"] + " Checked against the model's max_position_embeddings.")
optimizer = t4.selectbox("Optimizer", list(OPTIMIZERS), index=list(OPTIMIZERS).index("paged_adamw_8bit"), key="optim",
                         bind="query-params", help=describe(OPTIMIZERS, markdown=True))
u1, u2, u3 = st.columns([1, 1, 2])
gc = u1.checkbox("Gradient checkpointing", True, key="gc", bind="query-params", help=HELP["grad_checkpointing"])
r = u2.number_input("LoRA rank r", 1, BIG, 16, key="r", bind="query-params", disabled=method == "full",
                    help=HELP["r"] + " Checked against the width of the targeted layers.")
preset = u3.segmented_control("LoRA targets", list(TARGET_PRESETS), default="all-linear", key="targets",
                              bind="query-params", required=True, disabled=method == "full",
                              help=describe(TARGET_PRESETS, markdown=True))
with st.expander("Attention, adapter dtype, fp32 upcast, DoRA, generation"):
    a1, a2, a3, a4 = st.columns(4)
    attn = a1.selectbox("Attention", ["default", *ATTENTION], key="attn", bind="query-params",
                        help=describe(ATTENTION, markdown=True) + " · **default**: sdpa where the model has it.")
    adapter_dtype = a2.selectbox("Adapter dtype", list(ADAPTER_DTYPES), key="adapter_dtype", bind="query-params",
                                 help=describe(ADAPTER_DTYPES, markdown=True))
    upcast = a3.selectbox("kbit upcast", list(KBIT_UPCAST), key="upcast", bind="query-params",
                          help=describe(KBIT_UPCAST, markdown=True))
    dora = a4.checkbox("DoRA", False, key="dora", bind="query-params", help=HELP["use_dora"])
    loss = a4.selectbox("Loss", list(LOSSES), key="loss", bind="query-params", help=describe(LOSSES, markdown=True))
    g1, g2, g3 = st.columns(3)
    infer_batch = g1.number_input("Prompts at once", 1, BIG, 1, key="ibatch", bind="query-params",
                                  help=InferenceSettings.__dataclass_fields__["batch_size"].metadata["help"])
    prompt_tokens = g2.number_input("Prompt tokens", 1, BIG, 512, key="prompt", bind="query-params",
                                    help=InferenceSettings.__dataclass_fields__["prompt_tokens"].metadata["help"])
    new_tokens = g3.number_input("New tokens", 1, BIG, 256, key="new", bind="query-params",
                                 help=InferenceSettings.__dataclass_fields__["new_tokens"].metadata["help"])

settings = TrainingSettings(method=method, precision=precision, dtype=dtype, batch_size=int(batch_size),
                            seq_len=int(seq_len), grad_checkpointing=gc, optimizer=optimizer, r=int(r), targets=preset,
                            use_dora=dora, upcast_for_kbit=upcast == "on", attn=None if attn == "default" else attn,
                            adapter_dtype=adapter_dtype, loss=loss)
infer_settings = InferenceSettings(precision, dtype, int(infer_batch), int(prompt_tokens), int(new_tokens),
                                   None if attn == "default" else attn)


# ----------------------------------------------------------------------------------- simulate (off the script thread)
SIM_TASK, INVERSE_TASK = "calc_sim", "calc_inverse"


def simulations() -> dict | None:
    """The two simulations, from the cache at once, or from a background task (None while it runs: the
    page shows a spinner and reruns when the task is done, the results then come from the cache)."""
    if is_cached(arch, settings) and is_cached(arch, infer_settings):
        return simulate_page(arch, settings, infer_settings)
    signature = repr((arch.name, settings, infer_settings))
    failed = st.session_state.get("calc_sim_error")
    if failed and failed[0] == signature:
        st.error(failed[1], icon=":material/error:")
        return None
    task = get_task(SIM_TASK)
    if task is None or task.name != signature:
        if task is not None:
            task.cancel_event.set()  # the inference part is skipped; the training part lands in the cache anyway
        start_task(SIM_TASK, simulate_page, arch, settings, infer_settings).name = signature
    poll_task(SIM_TASK, _simulating, _keep_error, every=0.5)
    return None


def _simulating(task) -> None:
    message = task.progress[-1].message if task.progress else "starting"
    with st.spinner(f"Simulating {arch.name}: {message} (the step runs on fake tensors, a second or a few)…"):
        st.caption("The results appear here when the simulation is done; the page stays usable meanwhile.")


def _keep_error(task) -> None:
    if task.status == "failed":
        st.session_state["calc_sim_error"] = (task.name, task.error)


results = simulations()
if results is None:
    st.stop()
sim, gen = results["training"], results["inference"]

# ----------------------------------------------------------------------------------- training
st.subheader("Training step")
if isinstance(sim, str):
    st.error(sim, icon=":material/error:")
    sim = None
else:
    formula = estimate_training(arch, settings)
    total_formula = formula.total_bytes - formula.components["cuda_context"]
    k1, k2, k3 = st.columns(3)
    k1.metric("Simulated training peak", fmt_bytes(sim.peak_bytes),
              help="The predicted torch.cuda.max_memory_allocated() of one training step, CUDA context excluded: "
                   f"{sim.simulated_layers} of {sim.full_layers} decoder layers run on fake tensors, the middle one "
                   f"repeated to full depth. Peak: {sim.peak_at}. Simulated in {sim.seconds:.1f} s.")
    k2.metric(
        "Formula (the explanation)",
        fmt_bytes(total_formula),
        delta=f"{fmt_bytes(abs(total_formula - sim.peak_bytes))} "
        f"{'above' if total_formula > sim.peak_bytes else 'below'}",
        delta_color="off",
        help="The hand formula of the terms below, without the CUDA context.",
    )
    k3.metric("Trainable parameters", fmt_count(formula.trainable_params), help=f"{formula.trainable_params:,}")
    st.caption(f"Peak reached in the **{sim.peak_at}**.")
    rows = explain.formula_vs_simulation(sim, formula)
    st.dataframe([{"term": r["label"], "formula": fmt_bytes(r["formula_bytes"]),
                   "simulated at the peak": fmt_bytes(r["simulated_bytes"]),
                   "difference": ("+" if r["difference_bytes"] >= 0 else "−") + fmt_bytes(abs(r["difference_bytes"])),
                   "how the formula counts it": r["formula"]} for r in rows], hide_index=True, width="stretch")
    fig = go.Figure()
    for cat in explain.FORMULA_TERMS:
        f = next((r["formula_bytes"] for r in rows if r["category"] == cat), 0)
        fig.add_bar(name=explain.LABELS[cat], x=["formula", "simulated"], y=[f / GB, sim.by_category.get(cat, 0) / GB],
                    marker_color=CATEGORY_COLORS[cat])
    fig.update_layout(
        barmode="stack", yaxis_title="GB", height=340, margin=dict(t=30, b=0), legend=dict(orientation="h", y=-0.2)
    )
    st.plotly_chart(fig, width="stretch")
    for note in (*formula.notes, *sim.notes):
        st.caption(note)
    if sim.excluded.get("paged"):
        st.caption(
            f"Paged optimizer state: {fmt_bytes(sim.excluded['paged'])} in CUDA unified memory (not in the peak)."
        )


def timeline(s, title: str) -> None:
    """Live bytes through the step, coloured by phase, with the peak marked."""
    fig = go.Figure()
    for phase in dict.fromkeys(p["phase"] for p in s.timeline):
        pts = [p for p in s.timeline if p["phase"] == phase]
        fig.add_scatter(x=[p["x"] for p in pts], y=[p["bytes"] / GB for p in pts], mode="lines+markers",
                        marker=dict(size=3), line=dict(width=1), name=phase, line_color=PHASE_COLORS.get(phase))
    top = max(s.timeline, key=lambda p: p["bytes"])
    fig.add_scatter(
        x=[top["x"]],
        y=[s.peak_bytes / GB],
        mode="markers+text",
        marker=dict(size=12, symbol="star", color="black"),
        text=[f"peak {fmt_bytes(s.peak_bytes)}"],
        textposition="top center",
        name="peak",
    )
    fig.update_layout(
        title=title,
        xaxis_title=f"operations through the step (middle layer repeated to {s.full_layers} layers)",
        yaxis_title="live GB",
        height=360,
        margin=dict(t=40, b=0),
        legend=dict(orientation="h", y=-0.25),
    )
    st.plotly_chart(fig, width="stretch")


if sim is not None:
    timeline(sim, "Live bytes through one training step")
    st.markdown("**One decoder layer's forward, module by module** (what it allocates, and what autograd keeps "
                "for the backward — nothing with gradient checkpointing, which recomputes the layer):")
    st.dataframe([{"module": m["module"], "allocated": fmt_bytes(m["allocated_bytes"]),
                   "kept for backward": fmt_bytes(m["kept_for_backward_bytes"]), "tensors": m["tensors"]}
                  for m in explain.module_rows(sim)], hide_index=True, width="stretch")

# ----------------------------------------------------------------------------------- generation
st.subheader("Generation")
if isinstance(gen, str):
    st.error(gen, icon=":material/error:")
    gen = None
else:
    kv = kv_cache_bytes(arch, int(prompt_tokens) + int(new_tokens), int(infer_batch), dtype)
    i1, i2 = st.columns(2)
    i1.metric(
        "Simulated generation peak",
        fmt_bytes(gen.peak_bytes),
        help=f"Prefill of {int(prompt_tokens):,} tokens and one "
        f"decode step with the KV cache at {int(prompt_tokens) + int(new_tokens):,} tokens, {int(infer_batch)} "
        f"prompt(s). Peak: {gen.peak_at}.",
    )
    i2.metric(
        "KV cache (formula)", fmt_bytes(kv), help="2 (K and V) × layers × KV heads × head_dim × tokens × batch × bytes"
    )
    st.latex(rf"2 \times {arch.num_layers} \times {arch.num_kv_heads} \times {arch.head_dim} \times "
             rf"{int(prompt_tokens) + int(new_tokens):,} \times {int(infer_batch)} \times e = \text{{{fmt_bytes(kv)}}}")
    timeline(gen, "Live bytes through prefill and one decode step")

# ----------------------------------------------------------------------------------- fit
st.header("Does it fit?")
if sim is not None or gen is not None:
    machine = this_machine(cached_environment())
    table = []
    for g in (*GPUS, machine):
        row = {"GPU": g.name, "memory (GB = 10⁹ B)": f"{g.memory_bytes / GB:.2f}"}
        for label, s in ((f"training ({method})", sim), ("generation", gen)):
            if s is not None:
                v = gpu_verdict(s.peak_bytes, g)
                row[label] = f"{v.verdict} ({fmt_bytes(v.margin_bytes)} left)" if v.fits else v.verdict
        row["note"] = g.note
        table.append(row)
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(
        f"Fits = peak + CUDA context ({fmt_bytes(CUDA_CONTEXT_BYTES)}) + allocator fragmentation "
        f"({100 * FRAGMENTATION:.1f}% "
        "of the peak) within the card. Both allowances are the medians of published out-of-memory reports of "
        f"fine-tuning runs: context from "
        f"[{CUDA_CONTEXT_SOURCE.source}]({CUDA_CONTEXT_SOURCE.url}) ({CUDA_CONTEXT_SOURCE.run}), fragmentation from "
        f"[{FRAGMENTATION_SOURCE.source}]({FRAGMENTATION_SOURCE.url}) ({FRAGMENTATION_SOURCE.run}); the others are "
        f"listed in docs/published-memory.md. {UNITS_NOTE} The 'this machine' row without a GPU compares with RAM."
    )

# ----------------------------------------------------------------------------------- several GPUs
if sim is not None:
    st.header("More than one GPU")
    p1, p2, p3 = st.columns(3)
    n_gpus = p1.number_input(
        "GPUs", 1, 4096, 2, key="ngpus", bind="query-params", help="Data-parallel ranks, one batch each."
    )
    sharding = p2.selectbox("Sharding", list(LAUNCH_MODES), index=1, key="sharding", bind="query-params",
                            help=describe(LAUNCH_MODES, markdown=True))
    card = p3.selectbox("GPU", [g.name for g in GPUS], key="gpu", bind="query-params", help=UNITS_NOTE)
    with friendly_errors("The multi-GPU figure"):
        multi = per_gpu_peak(sim, int(n_gpus), sharding)
        fewest = smallest_fitting(sim, get_gpu(card), sharding)
        v = gpu_verdict(multi.per_gpu_peak_bytes, get_gpu(card))
        q1, q2 = st.columns(2)
        q1.metric(f"Per-GPU peak on {int(n_gpus)} × {card}", fmt_bytes(multi.per_gpu_peak_bytes),
                  help="; ".join(f"{k}: {fmt_bytes(val)}" for k, val in multi.terms.items()))
        why = ("DDP keeps the whole model on every GPU: more GPUs do not lower the per-GPU peak." if sharding == "ddp"
               else "What each GPU's step needs besides the sharded model state (activations, gathered layers) "
                    "does not fit, however many GPUs share the state.")
        q2.metric(f"Fewest {card} that fit", fewest if fewest else "none",
                  help=why if not fewest else "The smallest N whose per-GPU peak passes the verdict above.")
        st.caption(f"{card}: {v.verdict}. " + " · ".join(f"{k} {'+' if val >= 0 else '−'}{fmt_bytes(abs(val))}"
                                                          for k, val in multi.terms.items()))

# ----------------------------------------------------------------------------------- inverse
if sim is not None:
    st.header("The inverse question: what is the most that fits?")
    inv_gpu = st.selectbox("Solve for", [g.name for g in GPUS], key="inv_gpu", bind="query-params",
                           help="Each answer comes from a few simulations and a fit, checked by one more simulation.")
    knobs = [k for k in INVERSE_KNOBS if not (k == "r" and method == "full")]
    inverse_key = repr((arch.name, settings, inv_gpu))

    def _solving(task) -> None:
        st.caption(f"Solving on {inv_gpu}: {task.progress[-1].message if task.progress else 'starting'}…")

    def _keep_answers(task) -> None:
        st.session_state["calc_inverse_result"] = (task.name, task.result if task.status == "done" else task.error)

    kept = st.session_state.get("calc_inverse_result")
    if kept is not None and kept[0] == inverse_key:
        if isinstance(kept[1], str):
            st.error(kept[1], icon=":material/error:")
        else:
            cols = st.columns(len(knobs))
            for col, k in zip(cols, knobs, strict=True):
                a = kept[1][k]
                col.metric(f"max {k.replace('_', ' ')}", f"{a.value:,}" if a.value else "none fits",
                           help=INVERSE_KNOBS[k] + f" Simulated at {', '.join(str(x) for x, _ in a.points)}; "
                           + ("confirmed by a simulation." if a.checked else "not confirmed."))
    elif task_running(INVERSE_TASK):
        poll_task(INVERSE_TASK, _solving, _keep_answers)
    elif st.button(f"Solve for {inv_gpu}", icon=":material/search:",
                   help="Runs several simulations in the background (tens of seconds for large models)."):
        start_task(INVERSE_TASK, solve_all, arch, settings, get_gpu(inv_gpu), knobs).name = inverse_key
        st.rerun()

# ----------------------------------------------------------------------------------- time and cost
if sim is not None:
    st.header("How long, and what it costs")
    run_steps = st.number_input("Planned optimizer steps", 1, 10**7, 1000, key="run_steps", bind="query-params")
    with friendly_errors("The time figures"):
        _speed.speed_table(sim, int(n_gpus), sharding, int(run_steps))
        _speed.savings(arch, settings, card)

# ----------------------------------------------------------------------------------- code
st.header("Copy as code")
with friendly_errors("The code snippet"):
    try:
        st.code(training_code(arch, resolve_recipe(arch, settings)), language="python")
    except LabError as e:
        st.caption(f"No snippet for these settings: {e}")
st.caption(
    f"This page's settings are in the URL: share it to show the same configuration. {fmt_count(arch.params_total)} "
    f"parameters."
)
