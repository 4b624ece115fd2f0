"""Precision & memory calculator: the answers first (what the weights take, the simulated peak of a training
step and of generation, the smallest GPU that fits), the detail behind tabs: the weights at every precision
as bitsandbytes stores them, the formula beside the simulation as its explanation, the GPU table, more than
one GPU, the inverse question, code. Every setting lives in the URL (pages/_calc_inputs.py)."""

from __future__ import annotations

import streamlit as st

import pages._starting  # noqa: F401  (a fresh server's first visit: paints before the imports below)
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
    smallest_gpu,
    this_machine,
    verdicts,
)
from lab.estimate.inference import kv_cache_bytes
from lab.estimate.parallel import DEFAULT_OFFLOAD, OFFLOAD_HELP, per_gpu_peak, smallest_fitting, why_none_fit
from lab.estimate.simulate import PageSimulations, Simulation, is_cached, resolve_recipe, simulate_page
from lab.estimate.snippet import training_code
from lab.estimate.training import TrainingEstimate, estimate_training
from lab.estimate.weights import WeightEstimate, estimate_weights
from lab.units import fmt_bytes, fmt_count, fmt_seconds
from lab.vocab import FSDP_STRATEGIES, LAUNCH_MODES, PRECISIONS, describe
from pages import _calc_charts as charts
from pages import _speed
from pages._arch_ui import architecture_table, pick_architecture
from pages._calc_inputs import training_inputs, weights_inputs
from pages._inverse import inverse_tab
from pages._stop import stop_page
from pages._ui import cached_environment, friendly_errors, get_task, poll_task, start_task

SIM_TASK = "calc_sim"
TABS = ["Does it fit?", "Weights", "Training step", "Generation", "More than one GPU", "Most that fits",
        "Time & cost", "Code", "Architecture"]

st.title("Precision & memory calculator")
st.markdown(
    "What a model takes **before you download it**: its weights as bitsandbytes really stores them, and the peak "
    "of a training step and of generation — **simulated** on fake tensors (shapes, no data), counting every byte."
)
arch = pick_architecture()
if arch is None:
    stop_page()
precision, dtype = weights_inputs()
inputs = training_inputs(precision, dtype)
settings, infer_settings = inputs.training, inputs.inference
if inputs.switched:
    st.info(inputs.switched, icon=":material/swap_horiz:")


# ----------------------------------------------------------------------------------- simulate (off the script thread)
def simulations() -> tuple[PageSimulations | None, bool]:
    """The two simulations, from the cache at once, or from a background task, and whether generation is still
    being simulated. While the training step runs: None (the page shows a spinner). Once the task reports the
    training step: that part at once, generation pending (its metric says so), and the page reruns when the task
    is done (both parts then come from the cache)."""
    if is_cached(arch, settings) and is_cached(arch, infer_settings):
        return simulate_page(arch, settings, infer_settings), False
    signature = repr((arch.name, settings, infer_settings))
    failed = st.session_state.get("calc_sim_error")
    if failed and failed[0] == signature:
        st.error(failed[1], icon=":material/error:")
        return None, False
    task = get_task(SIM_TASK)
    if task is None or task.name != signature:
        if task is not None:
            task.cancel_event.set()  # the inference part is skipped; the training part lands in the cache anyway
        task = start_task(SIM_TASK, simulate_page, arch, settings, infer_settings)
        task.name = signature
    if task.partial is not None:  # the training step is in (get_task drained its queue): drawn now, generation follows
        poll_task(SIM_TASK, lambda _task: None, _keep_error, every=0.5)
        return task.partial, True
    poll_task(SIM_TASK, _simulating, _keep_error, every=0.5)
    return None, False


def _simulating(task) -> None:
    if task.partial is not None:
        st.rerun()  # the training step is in: the whole page draws it while generation is simulated
    message = task.progress[-1].message if task.progress else "starting"
    with st.spinner(f"Simulating {arch.name}: {message} (the step runs on fake tensors, a second or a few)…"):
        st.caption("The results appear here when the simulation is done; the page stays usable meanwhile.")


def _keep_error(task) -> None:
    if task.status == "failed":
        st.session_state["calc_sim_error"] = (task.name, task.error)


def simulated(part: Simulation | str | None) -> Simulation | None:
    """A simulation to draw, or None after saying why there is none."""
    if isinstance(part, str):
        st.error(part, icon=":material/error:")
    return part if isinstance(part, Simulation) else None


# ----------------------------------------------------------------------------------- the answers
def answers(w: WeightEstimate | None) -> tuple[Simulation | None, Simulation | None, TrainingEstimate | None, bool]:
    """One headline per question: the weights, the training peak, the generation peak, the smallest GPU."""
    st.subheader("The answers")
    a1, a2, a3, a4 = st.columns(4)
    if w is not None:
        a1.metric(f"Weights at {precision}", fmt_bytes(w.weights_bytes),
                  help="Every tensor the loaded model holds, quantization constants included (the Weights tab).")
    sims, generating = simulations()
    if sims is None:
        stop_page()
    sim, gen = simulated(sims.training), simulated(sims.inference)
    formula = estimate_training(arch, settings) if sim is not None else None
    if sim is not None:
        a2.metric("Simulated training peak", fmt_bytes(sim.peak_bytes),
                  help="The predicted torch.cuda.max_memory_allocated() of one training step, CUDA context excluded: "
                       f"{sim.simulated_layers} of {sim.full_layers} decoder layers run on fake tensors, the middle "
                       f"one repeated to full depth. Simulated in {fmt_seconds(sim.seconds)}.")
        a2.caption(f"Peak in the **{sim.peak_at}**. {explain.formula_gap(sim, formula)}")
        if w is not None and formula.weights.weights_bytes != w.weights_bytes:
            a1.caption(f"Training holds {fmt_bytes(formula.weights.weights_bytes)} of weights: "
                       "prepare_model_for_kbit_training keeps embeddings, norms and lm_head in fp32 "
                       f"(+{fmt_bytes(formula.weights.weights_bytes - w.weights_bytes)}).")
    if gen is not None:
        a3.metric("Simulated generation peak", fmt_bytes(gen.peak_bytes),
                  help=f"Prefill of {infer_settings.prompt_tokens:,} tokens and one decode step, "
                       f"{infer_settings.batch_size} prompt(s). Peak: {gen.peak_at}.")
    elif generating:
        a3.metric("Simulated generation peak", "simulating…", help="Generation is simulated after the training step.")
    peak = sim or gen
    if peak is not None:
        best = smallest_gpu(peak.peak_bytes)
        a4.metric(f"Smallest GPU for {'training' if sim else 'generation'}", best.gpu if best else "none listed",
                  help="Of the GPUs in the 'Does it fit?' tab: peak + CUDA context + fragmentation within the card.")
        a4.caption(best.summary if best else "Not even the largest listed GPU: see 'More than one GPU'.")
    return sim, gen, formula, generating


# ----------------------------------------------------------------------------------- tabs
def weights_tab(w: WeightEstimate) -> None:
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("True bytes", fmt_bytes(w.weights_bytes),
              help="Every tensor the loaded model holds, quantization constants included.")
    m2.metric("get_memory_footprint()", fmt_bytes(w.hf_footprint_bytes),
              delta=fmt_bytes(w.hf_footprint_bytes - w.weights_bytes) if w.quant_constants_bytes else None,
              delta_color="off", help="What transformers reports: parameters and buffers only. It counts a packed "
              "4-bit weight as its uint8 storage and misses absmax, code tables and int8 row scales.")
    m3.metric("Tutorial figure", fmt_bytes(w.naive_bytes), help="params × bits / 8 — assumes every parameter is "
              "quantized, ignores embeddings/lm_head/norms left in 16-bit and all constants.")
    m4.metric("Quantized params", f"{100 * w.quantized_params / w.params_total:.1f}%",
              help=f"{w.quantized_params:,} of {w.params_total:,} parameters sit in Linear layers bitsandbytes "
                   "quantizes.")
    st.dataframe([{"component": c.name, "params": f"{c.params:,}" if c.params else "", "stored as": c.storage,
                   "true bytes": fmt_bytes(c.bytes), "footprint counts": fmt_bytes(c.hf_bytes), "formula": c.formula}
                  for c in w.components], hide_index=True, width="stretch")
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
            f"{fmt_bytes(w.cpu_packed_bytes)}. CUDA keeps the layout above.")
    elif precision == "int8":
        st.latex(r"\text{int8 bytes} = n + 4\cdot\text{out\_features}\quad"
                 r"(\text{int8 weight} + \text{fp32 row scale SCB})")
    st.plotly_chart(charts.weights_by_precision([estimate_weights(arch, p, dtype) for p in PRECISIONS]),
                    width="stretch")
    with st.expander("Worked examples: where the tutorial figures come from (and go wrong)"):
        st.markdown(
            "- **Llama-3.2-3B** `get_memory_footprint()`: **12.9 GB** fp32, **3.6 GB** 8-bit, **2.2 GB** 4-bit "
            "(rest in fp16) — pick Llama-3.2-3B above to reproduce them. The 4-bit figure is not 3.2B × 0.5 B = "
            "1.6 GB: the 394M-parameter embedding (tied to lm_head) stays 16-bit, and the true bytes add ~40 MB of "
            "absmax with double quant (~170 MB without) that the footprint leaves out.\n"
            "- **Qwen2.5-0.5B**, 494,032,768 parameters: tutorials quote '≈0.23 GB at 4-bit' (all 494M × 0.5 B). But "
            "136M of them are the (tied) embedding, which bitsandbytes never quantizes: it alone is 272 MB in bf16. "
            "The real 4-bit model is ≈0.46 GB — twice the tutorial figure.\n"
            "- **'FP16 would use ~0.92 GB'** for Qwen2.5-0.5B is 494M × 2 B in GiB (0.92 GiB = 0.99 GB): check which "
            "unit a figure uses. This lab uses GB = 10⁹ bytes throughout.")


def training_tab(sim: Simulation, formula: TrainingEstimate) -> None:
    st.metric("Trainable parameters", fmt_count(formula.trainable_params), help=f"{formula.trainable_params:,}")
    rows = explain.formula_vs_simulation(sim, formula)
    st.markdown("**Term by term**: the hand formula (what a person can check) beside what the simulated step holds "
                "at its peak. " + explain.formula_gap(sim, formula))
    st.dataframe([{"term": r.label, "formula": fmt_bytes(r.formula_bytes),
                   "simulated at the peak": fmt_bytes(r.simulated_bytes),
                   "difference": ("+" if r.difference_bytes >= 0 else "−") + fmt_bytes(abs(r.difference_bytes)),
                   "how the formula counts it": r.formula} for r in rows], hide_index=True, width="stretch")
    st.plotly_chart(charts.formula_vs_simulated(rows, sim), width="stretch")
    for note in (*formula.notes, *sim.notes):
        st.caption(note)
    if sim.excluded.get("paged"):
        st.caption(f"Paged optimizer state: {fmt_bytes(sim.excluded['paged'])} in CUDA unified memory (not in the "
                   "peak).")
    st.plotly_chart(charts.timeline(sim, "Live bytes through one training step"), width="stretch")
    st.markdown("**One decoder layer's forward, module by module** (what it allocates, and what autograd keeps "
                "for the backward — nothing with gradient checkpointing, which recomputes the layer):")
    st.dataframe([{"module": m["module"], "allocated": fmt_bytes(m["allocated_bytes"]),
                   "kept for backward": fmt_bytes(m["kept_for_backward_bytes"]), "tensors": m["tensors"]}
                  for m in explain.module_rows(sim)], hide_index=True, width="stretch")


def generation_tab(gen: Simulation) -> None:
    s = infer_settings
    tokens = s.prompt_tokens + s.new_tokens
    kv = kv_cache_bytes(arch, tokens, s.batch_size, dtype)
    st.metric("KV cache (formula)", fmt_bytes(kv),
              help="2 (K and V) × layers × KV heads × head_dim × tokens × batch × bytes")
    st.latex(rf"2 \times {arch.num_layers} \times {arch.num_kv_heads} \times {arch.head_dim} \times "
             rf"{tokens:,} \times {s.batch_size} \times e = \text{{{fmt_bytes(kv)}}}")
    st.plotly_chart(charts.timeline(gen, "Live bytes through prefill and one decode step"), width="stretch")


def fit_tab(sim: Simulation | None, gen: Simulation | None) -> None:
    gpus = (*GPUS, this_machine(cached_environment()))
    table = [{"GPU": g.name, "memory (GB = 10⁹ B)": f"{g.memory_bytes / 1e9:.2f}"} for g in gpus]
    for label, s in ((f"training ({settings.method})", sim), ("generation", gen)):
        if s is not None:
            for row, v in zip(table, verdicts(s.peak_bytes, gpus), strict=True):
                row[label] = v.summary
    for row, g in zip(table, gpus, strict=True):
        row["note"] = g.note
    st.dataframe(table, hide_index=True, width="stretch")
    st.caption(
        f"Fits = peak + CUDA context ({fmt_bytes(CUDA_CONTEXT_BYTES)}) + allocator fragmentation "
        f"({100 * FRAGMENTATION:.1f}% of the peak) within the card. Both allowances are the medians of published "
        f"out-of-memory reports of fine-tuning runs: context from [{CUDA_CONTEXT_SOURCE.source}]"
        f"({CUDA_CONTEXT_SOURCE.url}) ({CUDA_CONTEXT_SOURCE.run}), fragmentation from [{FRAGMENTATION_SOURCE.source}]"
        f"({FRAGMENTATION_SOURCE.url}) ({FRAGMENTATION_SOURCE.run}); the others are listed in "
        f"docs/published-memory.md. {UNITS_NOTE} The 'this machine' row without a GPU compares with RAM.")


def multi_gpu_tab(sim: Simulation) -> tuple[int, str, str]:
    """The per-GPU peak on N GPUs; returns (GPUs, sharding, card), which the time tab prices too."""
    p1, p2, p3 = st.columns(3)
    n_gpus = p1.number_input("GPUs", 1, 4096, 2, key="ngpus", bind="query-params",
                             help="Data-parallel ranks, one batch each.")
    sharding = p2.selectbox("Sharding", list(LAUNCH_MODES), index=1, key="sharding", bind="query-params",
                            help=describe(LAUNCH_MODES, markdown=True))
    card = p3.selectbox("GPU", [g.name for g in GPUS], key="gpu", bind="query-params", help=UNITS_NOTE)
    fsdp = {}
    if sharding == "fsdp":
        f1, f2 = st.columns(2)
        fsdp["strategy"] = f1.selectbox("FSDP sharding strategy", list(FSDP_STRATEGIES), key="fsdp_strategy",
                                        bind="query-params", help=describe(FSDP_STRATEGIES, markdown=True))
        fsdp["offload"] = f2.toggle("CPU offload", DEFAULT_OFFLOAD, key="cpu_offload", help=OFFLOAD_HELP)
    with friendly_errors("The multi-GPU figure"):
        multi = per_gpu_peak(sim, int(n_gpus), sharding, **fsdp)
        fewest = smallest_fitting(sim, get_gpu(card), sharding, **fsdp)
        v = multi.verdict(get_gpu(card))
        q1, q2 = st.columns(2)
        q1.metric(f"Per-GPU peak on {int(n_gpus)} × {card}", fmt_bytes(multi.per_gpu_peak_bytes),
                  help="; ".join(f"{k}: {fmt_bytes(val)}" for k, val in multi.terms.items()))
        q2.metric(f"Fewest {card} that fit", fewest if fewest else "none",
                  help=why_none_fit(sharding) if not fewest else "The smallest N whose per-GPU peak passes the "
                                                                 "verdict above.")
        st.caption(f"{card}: {v.verdict}. " + " · ".join(f"{k} {'+' if val >= 0 else '−'}{fmt_bytes(abs(val))}"
                                                          for k, val in multi.terms.items()))
    return int(n_gpus), sharding, card


def time_tab(sim: Simulation, n_gpus: int, sharding: str, card: str) -> None:
    st.markdown(f"**How long, and what it costs** on {n_gpus} GPU(s), {sharding} (set in *More than one GPU*).")
    run_steps = st.number_input("Planned optimizer steps", 1, 10**7, 1000, key="run_steps", bind="query-params")
    with friendly_errors("The time figures"):
        _speed.speed_table(sim, n_gpus, sharding, int(run_steps))
        _speed.savings(arch, settings, card)


def code_tab() -> None:
    with friendly_errors("The code snippet"):
        try:
            st.code(training_code(arch, resolve_recipe(arch, settings)), language="python")
        except LabError as e:
            st.caption(f"No snippet for these settings: {e}")
    st.caption(f"This page's settings are in the URL: share it to show the same configuration. "
               f"{fmt_count(arch.params_total)} parameters.")


# ----------------------------------------------------------------------------------- the page
weights = None
with friendly_errors("The weights estimate"):
    weights = estimate_weights(arch, precision, dtype)
top = st.container()  # the answers, drawn last: the Weights tab needs no simulation and shows meanwhile
fit, w_tab, t_tab, g_tab, multi_tab, inv_tab, time_t, c_tab, a_tab = st.tabs(TABS)
with w_tab:
    if weights is not None:
        weights_tab(weights)
with a_tab:
    architecture_table(arch)
with top:
    sim, gen, formula, generating = answers(weights)  # stops the page while the training step is simulated
with fit:
    fit_tab(sim, gen)
with t_tab:
    if sim is not None:
        training_tab(sim, formula)
    else:
        st.caption("No training step for these settings (the reason is above).")
with g_tab:
    if gen is not None:
        generation_tab(gen)
    elif generating:
        st.caption("Simulating generation: prefill and one decode step on fake tensors…")
with multi_tab:
    if sim is not None:
        parallel = multi_gpu_tab(sim)
with time_t:
    if sim is not None:
        time_tab(sim, *parallel)
with inv_tab:
    if sim is not None:
        st.markdown("**What is the most that fits?** The largest batch, sequence length and (LoRA) rank on one GPU.")
        inverse_tab(arch, settings)
with c_tab:
    code_tab()
