"""Memory by simulation: run the real training or generation step on fake tensors and count live bytes.

The model is built from its config on the meta device (no weights, no download), quantized the way
bitsandbytes would (`fake_quant`), prepared with the Training page's recipe (`recipe`), and turned
into fake tensors (`FakeTensorMode`: shapes, dtypes and lifetimes, no data). Forward, backward and
two optimizer steps then run for real on those tensors while `tracker.LiveBytes` counts every
allocation and free. Three decoder layers are simulated and `compose` repeats the middle one up to
the model's depth, so a 70B model costs what a 3-layer one does (about a second here).

The answer is the predicted `torch.cuda.max_memory_allocated()` of a training step (CUDA context
excluded), by category, with a timeline; or, for generation, the peak of a prefill of N prompt
tokens and one decode step with the KV cache at its final length.
"""

from __future__ import annotations

import copy
import inspect
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode

from lab.errors import Cancelled, LabError
from lab.estimate import compose as comp
from lab.estimate.experts import expert_names
from lab.estimate.fake_quant import attach_quant_state, device_paths, fake_dequantize, quantize_meta_model
from lab.estimate.lora import left_out, resolve_targets
from lab.estimate.origin import origin
from lab.estimate.patch import for_this_thread
from lab.estimate.phases import param_layout, phase_peaks
from lab.estimate.recipe import (
    Recipe,
    initialize_optimizer_state,
    layer_markers,
    make_optimizer,
    prepare_for_training,
    register_model,
    train_step,
    trl_trainer,
)
from lab.estimate.replay import Trace
from lab.estimate.scan import scan_paths
from lab.estimate.tracker import CUDA_BLOCK, NO_LAYER, OVERRIDES, LiveBytes, cancel_on, stop_if_cancelled
from lab.estimate.training import adapter_dtype
from lab.estimate.work import OpCounter
from lab.models.architecture import config_from_dict
from lab.models.construct import constructing
from lab.models.precision import get_precision, resolve_dtype
from lab.recipe import SETTINGS
from lab.vocab import ATTENTION, DTYPES, LOSSES, METHODS, OPTIMIZERS, lookup

CATEGORIES = ("weights", "adapters", "gradients", "optimizer", "activations", "temporaries", "kv_cache")
CATEGORY_HELP = {
    "weights": "The base model: parameters, buffers and bitsandbytes' quantization constants.",
    "adapters": "The trainable LoRA matrices (and DoRA magnitudes).",
    "gradients": "One gradient per trainable parameter, alive from the backward to the optimizer step.",
    "optimizer": "Optimizer state (AdamW's two moments, 8-bit states and their scales, ...) and, during the "
                 "optimizer step, its scratch (foreach AdamW makes state-sized temporaries).",
    "activations": "Tensors made by the forward: those autograd keeps for the backward, and the forward's own "
                   "short-lived intermediates.",
    "temporaries": "Short-lived tensors of the backward (gradients flowing between layers, dequantized weights).",
    "kv_cache": "Keys and values of every layer for every token so far (generation).",
}
PAGED_HELP = ("Paged optimizer state lives in CUDA unified memory, outside PyTorch's allocator: it does not count in "
              "max_memory_allocated and is moved to CPU RAM when the GPU runs short.")
_LOCK = threading.Lock()  # the simulation switches library code paths (bitsandbytes, TRL) while it runs
# The cache's own lock, held for a lookup only: a page asking whether its setting is cached (`is_cached`, on the
# script thread) must not wait behind _LOCK for a simulation of a setting it has already left, or it could not
# even reach the cancel that stops that simulation.
_CACHE_LOCK = threading.Lock()
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 256
_IN_FLIGHT: dict = {}  # cache key -> Event set when the thread simulating it ends (see _cached)


@dataclass(frozen=True)
class Simulation:
    """What one simulated step holds at its peak, and how memory moves through it."""

    kind: str  # training | inference
    peak_bytes: int  # predicted max_memory_allocated of the step (no CUDA context)
    by_category: dict[str, int]  # live bytes per category at the peak
    peak_at: str  # where the peak happens
    timeline: list[dict]  # {"x", "bytes", "phase", "step"}: live bytes through the step
    excluded: dict[str, int]  # e.g. {"paged": bytes} of paged optimizer state (outside the allocator)
    layer_modules: list[dict]  # per-module activation bytes of one decoder layer's forward
    simulated_layers: int
    full_layers: int
    seconds: float
    settings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # bytes of every weights / adapters / gradients / optimizer / paged / kv_cache tensor of the model
    # (all layers), and of one decoder layer: what multi-GPU sharding divides
    totals: dict[str, int] = field(default_factory=dict)
    one_layer: dict[str, int] = field(default_factory=dict)
    work: tuple = ()  # lab.estimate.work.Work rows of the full-depth step: what lab.estimate.speed times
    # training: each phase's peak by category, and the parameters as FSDP wraps them (lab.estimate.phases),
    # what lab.estimate.parallel redistributes over several GPUs
    phase_peaks: dict[str, dict[str, int]] = field(default_factory=dict)
    layout: dict[str, int] = field(default_factory=dict)
    # training: the step's event stream, which lab.estimate.replay replays at another batch, sequence or rank
    trace: Trace | None = field(default=None, repr=False, compare=False)

    def to_json(self, timeline: bool = False) -> dict:
        d = asdict(replace(self, trace=None))
        d.pop("trace")
        d.pop("work")
        d["recipe"] = d.pop("settings")  # the resolved recipe (TrainingSettings stay under "settings")
        if not timeline:
            d.pop("timeline")
        return d


# --------------------------------------------------------------------------- model building
def truncated_config(config, layers: int):
    """The config with `layers` decoder layers (per-layer lists cut to match)."""
    cfg = copy.deepcopy(config)
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    text.num_hidden_layers = layers
    if isinstance(vars(text).get("decoder_layers"), int):  # BART-style: num_hidden_layers is the encoder's depth
        text.decoder_layers = layers
    # `layer_types` may be an alias of the field that holds the list (Zamba's `layers_block_type`)
    name = getattr(type(text), "attribute_map", {}).get("layer_types", "layer_types")
    value = vars(text).get(name)
    if isinstance(value, (list, tuple)) and len(value) > layers:
        kinds = _keep_kinds(list(value), layers)
        setattr(text, name, kinds)
        if "hybrid_layer_ids" in vars(text):  # Zamba2 derives from the kinds where its shared attention sits
            text.hybrid_layer_ids = [i for i, kind in enumerate(kinds) if kind == "hybrid"]
    cfg.use_cache = False
    return cfg


def _keep_kinds(kinds: list, layers: int) -> list:
    """The first `layers` layer kinds, the last ones swapped for kinds the model has further down (a hybrid
    whose first layers are all linear attention still gets its full-attention layer, and its KV cache)."""
    head = kinds[:layers]
    missing = [k for k in dict.fromkeys(kinds) if k not in head]
    for i, kind in enumerate(missing[: max(0, layers - 1)]):
        head[layers - 1 - i] = kind
    return head


def meta_model(config, dtype: torch.dtype, attn: str):
    # transformers: 0.6 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM

    try:
        with constructing(), torch.device("meta"):  # bf16 for this thread only (issue 20)
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn)
    except (ValueError, ImportError) as e:
        detail = " ".join(str(e).split())
        hint = "Try --attn eager." if attn != "eager" and "attention" in detail.lower() else None
        raise LabError(f"transformers cannot build {config.model_type!r} with attention {attn!r}: "
                       + detail.split(". ")[0] + ".", hint) from None


def fake_model(config, recipe: Recipe, layers: int, training: bool = True):
    """The model with `layers` decoder layers as the recipe loads and prepares it, on fake tensors."""
    model = meta_model(truncated_config(config, layers), recipe.dtype, recipe.attn)
    stop_if_cancelled()  # building is a third of a simulation: a page that moved on stops between its stages
    quantized = []
    if recipe.quantized:
        quantized = quantize_meta_model(model, recipe.precision, recipe.autocast or recipe.dtype)
        stop_if_cancelled()
    if training:
        with torch.device("meta"), fake_dequantize():  # peft builds adapter layers on the default device first
            model = prepare_for_training(model, recipe)
    else:
        model.eval()
    shared = _shared_parameters(model)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.to_empty(device="cpu")
        for m in quantized:
            attach_quant_state(m)
    for places in shared:  # to_empty() converts a tied parameter once per module: tie them again
        first = getattr(*places[0])
        for module, name in places[1:]:
            setattr(module, name, first)
    return model, mode


def _shared_parameters(model) -> list[list[tuple]]:
    """Parameters registered in more than one place (tied embeddings): [(module, name), ...] each."""
    places: dict[int, list[tuple]] = {}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            places.setdefault(id(p), []).append((module, name))
    return [v for v in places.values() if len(v) > 1]


@contextmanager
def trl_device_paths(device: str):
    """TRL's fused LM head on CUDA folds each logits tile with a Triton kernel and accumulates the
    gradient GEMMs with `addmm(out_dtype=fp32)`: no allocation beyond the tile it reuses. On our fake
    CPU tensors it would take its CPU fallback (fp32 copies of every tile), so on the CUDA path those
    three functions become no-ops (they only fill values) and the head scores the valid positions only,
    as on a Triton device (`compact`)."""
    if device != "cuda":
        yield
        return
    trl_trainer()
    # TRL: 4.1 s to import; imported where used, not with this module
    import trl.trainer.utils as tu
    from trl.kernels import chunked_logprob as cl

    with ExitStack() as stack:
        for name in ("_forward_tile", "_backward_tile", "_addmm_fp32"):
            stack.enter_context(for_this_thread(cl, name, lambda *a, **k: None))
        stack.enter_context(for_this_thread(tu, "_use_triton", lambda device: True))
        yield


@contextmanager
def transformers_mask_paths():
    """transformers skips the 4-D causal mask under SDPA when nothing is padded or packed (then SDPA
    runs with `is_causal=True`, and grouped-query attention without repeating K/V), but refuses to
    look for padding or packed sequences in fake tensors, taking them for a graph being traced. Our
    batches are neither padded nor packed, so decide as the real run does."""
    # transformers: 2.1 s to import; imported where used, not with this module
    from transformers import masking_utils as mu

    original = mu._ignore_causal_mask_sdpa

    def ignore(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size=None):
        if padding_mask is None:
            return (q_length == 1 or kv_length == q_length) and (
                local_attention_size is None or kv_length < local_attention_size)
        return original(padding_mask, q_length, kv_length, q_offset, kv_offset, local_attention_size)

    with for_this_thread(mu, "_ignore_causal_mask_sdpa", ignore), \
            for_this_thread(mu, "find_packed_sequence_indices", lambda position_ids: None), experts_paths():
        yield


@contextmanager
def experts_paths():
    """Fused experts multiply with torch's grouped_mm, whose kernel takes bf16 only; experts in another
    dtype (fp32 after prepare_model_for_kbit_training's upcast) go through transformers' own fallback
    (same output size). Decide that from the dtype, as the fake weights have no data pointer to check."""
    try:
        # transformers: 1.7 s to import; imported where used, not with this module
        from transformers.integrations import moe
    except ImportError:
        yield
        return
    original = moe._can_use_grouped_mm

    def can_use(input, weight, offs):
        return weight.dtype == torch.bfloat16 and input.device.type != "meta" and original(input, weight, offs)

    with for_this_thread(moe, "_can_use_grouped_mm", can_use):
        yield


def _bool_index(tracker, func, args, kwargs):
    """`x[mask]` has a data-dependent size; the simulation takes every position (all labels valid)."""
    x, indices = args[0], args[1]
    if not any(i is not None and i.dtype == torch.bool for i in indices):
        return func(*args, **kwargs)
    mask = next(i for i in indices if i is not None)
    return torch.empty((mask.numel(), *x.shape[mask.dim():]), dtype=x.dtype, device=x.device)


OVERRIDES[torch.ops.aten.index.Tensor] = _bool_index


# --------------------------------------------------------------------------- running
def _categories(tracker: LiveBytes) -> list[str]:
    out = []
    for s in tracker.storages:
        if s.role in ("weights", "adapters", "gradients", "optimizer", "paged", "kv_cache"):
            out.append(s.role)
        elif s.role == "inputs" or s.phase in ("forward", "recompute"):
            out.append("activations")
        elif s.phase == "optimizer":
            out.append("optimizer")  # the step's own scratch (foreach AdamW: a state-sized temporary or two)
        else:
            out.append("temporaries")
    return out


def _layer_table(tracker: LiveBytes) -> list[dict]:
    """Bytes the forward of the profiled layer allocates per module, and how much of it is still
    alive when the backward starts (what autograd keeps)."""
    freed_in: dict[int, int] = {}
    for idx, sign, seg in tracker.events:
        if sign < 0:
            freed_in[idx] = seg
    bwd_start = next((i for i, s in enumerate(tracker.segments) if s[0] == "head_bwd"), len(tracker.segments))
    first_step_end = next((i for i, s in enumerate(tracker.segments) if s[0] == "opt"), len(tracker.segments))
    rows: dict[str, dict] = {}
    for idx, s in enumerate(tracker.storages):
        if s.module is None or s.phase != "forward":
            continue
        created = next(seg for i, sign, seg in tracker.events if i == idx and sign > 0)
        if created >= first_step_end:
            continue  # the second step repeats the first
        row = rows.setdefault(s.module, {"module": s.module, "allocated_bytes": 0, "kept_for_backward_bytes": 0,
                                         "tensors": 0})
        row["allocated_bytes"] += s.nbytes
        row["tensors"] += 1
        if freed_in.get(idx, len(tracker.segments)) >= bwd_start:
            row["kept_for_backward_bytes"] += s.nbytes
    return sorted(rows.values(), key=lambda r: -r["allocated_bytes"])


def run_training(model, mode, recipe: Recipe, profile_layer: int | None = comp.MIDDLE, fake: bool = True) -> LiveBytes:
    """The steady-state training step (optimizer state already there) under the tracker."""
    tracker = LiveBytes(round_to=CUDA_BLOCK if recipe.device == "cuda" else 1, fake=fake)
    tracker.ops = OpCounter(checkpointing=recipe.gradient_checkpointing)
    optimizer = make_optimizer(model, recipe)  # outside fake mode: bitsandbytes builds its quantile maps from data
    with mode:
        register_model(model, tracker, recipe)
        input_ids = torch.zeros((recipe.batch_size, recipe.max_length), dtype=torch.long)
        tracker.register(input_ids, "inputs")
        with device_paths(recipe.device), trl_device_paths(recipe.device if fake else "cpu"), \
                transformers_mask_paths(), scan_paths(recipe.device if fake else "cpu", tracker.kernels):
            initialize_optimizer_state(model, optimizer, tracker, recipe)
            with tracker:
                train_step(model, optimizer, input_ids, recipe, tracker, 1, profile_layer)
    return tracker


def simulate_training(config, recipe: Recipe, name: str = "", every_layer: bool = False) -> Simulation:
    """Simulate a training step of `config` under `recipe`: three layers scaled to full depth, or
    (`every_layer`, to check that scaling) all of them."""
    full = _num_layers(config)
    layers = full if every_layer else min(full, comp.SIMULATED_LAYERS)
    key = ("train", name, config.to_json_string(use_diff=False), recipe, layers)
    return _cached(key, lambda: _simulate_training(config, recipe, full, layers))


def _simulate_training(config, recipe: Recipe, full: int, layers: int) -> Simulation:
    t0 = time.perf_counter()
    with _LOCK, _friendly_errors(config, "training step"), warnings.catch_warnings():
        stop_if_cancelled()  # superseded while it waited for the lock: the step is not begun
        warnings.simplefilter("ignore")  # deprecation chatter of the libraries the recipe calls
        model, mode = _prepared_model(config, recipe, layers)
        try:
            tracker = run_training(model, mode, recipe, profile_layer=min(comp.MIDDLE, layers - 1))
        except Cancelled:
            _forget_model(config, recipe, layers)  # a step stopped halfway may leave gradients on the model
            raise
        layout = param_layout(model, full, layers)
    return _result("training", tracker, full, layers, recipe, t0, layout)


_MODELS: OrderedDict = OrderedDict()
_MODELS_SIZE = 8


def _prepared_model(config, recipe: Recipe, layers: int):
    """The fake model for `recipe`, reused when only the batch, the sequence or the optimizer changed:
    building and preparing it is a third of a simulation, and a step leaves it as it found it (no
    gradients, the optimizer is made anew). Called under _LOCK."""
    key = _model_key(config, recipe, layers)
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    _MODELS[key] = fake_model(config, recipe, layers)
    while len(_MODELS) > _MODELS_SIZE:
        _MODELS.popitem(last=False)
    return _MODELS[key]


def _model_key(config, recipe: Recipe, layers: int) -> tuple:
    return config.to_json_string(use_diff=False), replace(recipe, batch_size=1, max_length=1, optimizer="sgd"), layers


def _forget_model(config, recipe: Recipe, layers: int) -> None:
    _MODELS.pop(_model_key(config, recipe, layers), None)


def _result(kind: str, tracker: LiveBytes, full: int, layers: int, recipe, t0: float,
            layout: dict[str, int] | None = None) -> Simulation:
    categories = _categories(tracker)
    blocks = comp.blocks_from(tracker, categories, full, layers)
    composed = comp.compose(blocks, full)
    notes = []
    if composed.excluded.get("paged"):
        notes.append(PAGED_HELP)
    notes += tracker.kernels  # the GPU kernels stood in for (lab.estimate.scan), each with its note
    totals, one_layer = _role_totals(tracker, full, layers)
    return Simulation(kind, composed.peak_bytes, composed.by_category, composed.peak_at, composed.timeline,
                      composed.excluded, _layer_table(tracker), layers, full, round(time.perf_counter() - t0, 3),
                      _settings_json(recipe), tuple(notes), totals, one_layer, _work(tracker, full, layers, totals),
                      phase_peaks(blocks) if layout is not None else {}, layout or {},
                      Trace.of(tracker, categories, full, layers) if kind == "training" else None)


def _work(tracker: LiveBytes, full: int, layers: int, totals: dict[str, int]) -> tuple:
    """The step's op rows at full depth (the optimizer's scaled by the model's trainable bytes)."""
    scaled = layers == comp.SIMULATED_LAYERS and full > layers
    middle = comp.MIDDLE if scaled else min(comp.MIDDLE, layers - 1)
    simulated = sum(s.nbytes for s in tracker.storages if s.role == "gradients")
    scale = totals.get("gradients", 0) / simulated if simulated else 1.0
    return tracker.ops.scaled(full, layers if scaled else full, middle, scale)


ROLES = ("weights", "adapters", "gradients", "optimizer", "paged", "kv_cache")


def _role_totals(tracker: LiveBytes, full: int, layers: int) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes per role over the full-depth model (the middle layer's tensors count once per middle layer),
    and one decoder layer's."""
    reps = full - (layers - 1) if full > layers else 1
    scaled = layers == comp.SIMULATED_LAYERS and full > layers
    middle = comp.MIDDLE if scaled else min(comp.MIDDLE, layers - 1)
    totals = dict.fromkeys(ROLES, 0)
    one = dict.fromkeys(ROLES, 0)
    for st in tracker.storages:
        if st.role not in totals:
            continue
        totals[st.role] += st.nbytes * (reps if scaled and st.owner == middle else 1)
        if st.owner == middle:
            one[st.role] += st.nbytes
    return {k: v for k, v in totals.items() if v}, {k: v for k, v in one.items() if v}


def _settings_json(recipe) -> dict:
    d = asdict(recipe)
    return {k: str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v for k, v in d.items()}


# --------------------------------------------------------------------------- inference
@dataclass(frozen=True)
class InferenceRecipe:
    precision: str
    dtype: torch.dtype
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    attn: str = "sdpa"
    device: str = "cuda"

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "nf4", "nf4-dq", "fp4")

    # what fake_model reads from a training recipe
    autocast = None


def run_inference(model, mode, recipe: InferenceRecipe, fake: bool = True) -> LiveBytes:
    """`generate`'s memory: a prefill of the prompts, then one decode step with the KV cache at its
    final length (prompt + new tokens), each as `generate` runs it (logits of the last position only,
    copied to fp32 for the logits processors)."""
    # transformers: 0.5 s to import; imported where used, not with this module
    from transformers import DynamicCache

    tracker = LiveBytes(round_to=CUDA_BLOCK if recipe.device == "cuda" else 1, fake=fake)
    tracker.ops = OpCounter()
    b, n, m = recipe.batch_size, recipe.prompt_tokens, recipe.new_tokens
    for module in model.modules():  # RWKV rescales some weights in place once, at its first inference forward:
        if getattr(module, "layers_are_rescaled", None) is False:  # values only (and, at 4 bits, bitsandbytes
            module.layers_are_rescaled = True  # re-quantizing them, which no fake tensor can): taken as done
    with mode:
        register_model(model, tracker, _weights_only(recipe))
        with device_paths(recipe.device), transformers_mask_paths(), torch.no_grad(), \
                scan_paths(recipe.device if fake else "cpu", tracker.kernels):
            with tracker:
                cache = DynamicCache(config=model.config)
                _mark_cache(tracker, cache)
                _forward(model, tracker, torch.zeros((b, n), dtype=torch.long), cache, "prefill", 0)
                del cache
            # the cache as the last decode step finds it, filled without tracking (filling it here would
            # add copies that generation never makes), then counted
            tracker.segment(("cache", "decode"))
            with LiveBytes(round_to=1, fake=fake):  # a scratch tracker: its overrides (int8's outlier split), no count
                cache = _filled_cache(model, b, n + m - 1)
            for j, layer in enumerate(cache.layers):
                for value in vars(layer).values():
                    if isinstance(value, torch.Tensor):
                        tracker.register(value, "kv_cache", j)
            with tracker:
                _forward(model, tracker, torch.zeros((b, 1), dtype=torch.long), cache, "decode", n + m - 1)
                del cache
    return tracker


def _forward(model, tracker: LiveBytes, input_ids, cache, step: str, past: int) -> None:
    if tracker.ops is not None:
        tracker.ops.stage = step
    with layer_markers(model, tracker, step, comp.MIDDLE if step == "prefill" else None):
        tracker.segment(("pre", step))
        tracker.phase, tracker.owner = "forward", NO_LAYER
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                    **_positions(model, input_ids, past))
        _mark_cache(tracker, cache)
        scores = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
        _ = scores.argmax(dim=-1)
        del out, scores
    tracker.phase = "setup"


def _positions(model, input_ids, past: int) -> dict:
    """position_ids as `generate` passes them: a truncated hybrid (the first layers of Zamba2 or Bamba are
    all state-space) has no attention layer to count the cache's length from."""
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return {}
    b, n = input_ids.shape
    return {"position_ids": torch.arange(past, past + n, dtype=torch.long).unsqueeze(0).expand(b, n)}


def _filled_cache(model, batch: int, length: int):
    """The cache holding `length` tokens, as generation leaves it: filled by the model's own prefill, so
    its own cache layers allocate what they keep (MLA's compressed keys, a sliding window, the fixed-size
    states of linear attention and state-space layers, per-layer head sizes)."""
    # transformers: 0.5 s to import; imported where used, not with this module
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.zeros((batch, length), dtype=torch.long)
    model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **_positions(model, ids, 0))
    return cache


def _mark_cache(tracker: LiveBytes, cache) -> None:
    """File every tensor the cache holds as the KV cache of its layer."""
    for j, layer in enumerate(cache.layers):
        for value in vars(layer).values():
            if isinstance(value, torch.Tensor):
                tracker.mark(value, "kv_cache", j)


def _weights_only(recipe):
    """A recipe that files every parameter as base weights (generation trains nothing)."""
    return Recipe("full", recipe.precision, recipe.dtype, None, recipe.dtype, False, False, "sgd", 1, 1)


def simulate_inference(config, recipe: InferenceRecipe, name: str = "", every_layer: bool = False) -> Simulation:
    """Simulate generation's peak (prefill + one decode step at the final length)."""
    full = _num_layers(config)
    layers = full if every_layer else min(full, comp.SIMULATED_LAYERS)
    key = ("infer", name, config.to_json_string(use_diff=False), recipe, layers)
    return _cached(key, lambda: _simulate_inference(config, recipe, full, layers))


def _simulate_inference(config, recipe: InferenceRecipe, full: int, layers: int) -> Simulation:
    t0 = time.perf_counter()
    with _LOCK, _friendly_errors(config, "generation"), warnings.catch_warnings():
        stop_if_cancelled()
        warnings.simplefilter("ignore")
        cfg = copy.deepcopy(config)
        model, mode = fake_model(cfg, recipe, layers, training=False)
        model.requires_grad_(False)
        model.config.use_cache = True
        tracker = run_inference(model, mode, recipe)
    return _result("inference", tracker, full, layers, recipe, t0)


# --------------------------------------------------------------------------- helpers
def _num_layers(config) -> int:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    own = vars(text).get("decoder_layers")  # BART-style causal LMs run the decoder's layers
    return int(own if isinstance(own, int) else getattr(text, "num_hidden_layers", 0) or 0)


def _cached(key, compute):
    """The cached result for `key`, else `compute()`'s, computed once however many threads ask at the same time:
    a room opening the calculator on a fresh server (or a visitor arriving while the server's warm-up simulates the
    same page, lab.estimate.warmup) waits for the simulation already running instead of repeating it behind
    `_LOCK`. A waiter whose own page moved on stops waiting (Cancelled); one whose computing thread failed or was
    cancelled computes it itself. The cache and the keys in flight have a lock of their own (`_CACHE_LOCK`), never
    held while a step is simulated."""
    while True:
        with _CACHE_LOCK:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
            running = _IN_FLIGHT.get(key)
            if running is None:
                running = _IN_FLIGHT[key] = threading.Event()
                break
        while not running.wait(0.1):
            stop_if_cancelled()
    try:
        result = compute()
        with _CACHE_LOCK:
            _CACHE[key] = result
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return result
    finally:
        with _CACHE_LOCK:
            _IN_FLIGHT.pop(key, None)
        running.set()


@contextmanager
def _friendly_errors(config, step: str):
    """What the model's own code cannot run (a config transformers cannot run, a step that depends on the data)
    becomes one line naming the model type, the step and the file that stopped; an error of the lab's own code
    (lab.estimate.origin) is re-raised as it is, marked internal, so a bug of ours never passes for a refusal."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    own = vars(text)
    experts = next((own[k] for k in ("n_routed_experts", "num_local_experts", "num_experts") if own.get(k)), None)
    if experts and "num_experts_per_tok" in own and own["num_experts_per_tok"] is None:
        raise LabError(f"{config.model_type!r} config has {experts} experts but num_experts_per_tok=None: its router "
                       "cannot pick experts, so transformers cannot run it.",
                       "Set num_experts_per_tok in config.json (DeepSeek-V2 uses 6).")
    try:
        yield
    except (DynamicOutputShapeException, DataDependentOutputException) as e:
        raise LabError(f"{config.model_type!r} cannot be simulated: its step depends on the data ({e.func}), "
                       "as mixture-of-experts routing does.", "The weights estimate still applies.") from None
    except (RuntimeError, ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError) as e:
        where = origin(e)
        if where.ours:  # a bug of the lab's, not a limit of the model: never dressed up as a refusal
            e.add_note(f"Internal error of QLoRA Lab in the {step} of {config.model_type!r} at {where.where}: "
                       "please report it with this traceback.")
            raise
        # the model's own code (or peft's, TRL's) fails on this config in this step: one line, not a traceback
        detail = " ".join(str(e).split())[:200]
        raise LabError(f"{config.model_type!r} cannot be simulated ({step}): {where.where} stops with "
                       f"{type(e).__name__}: {detail}",
                       "The weights estimate still applies; try --loss logits or --attn eager, or report the "
                       "model type.") from None


# --------------------------------------------------------------------------- settings -> recipe
def resolve_attention(arch, attn: str | None) -> str:
    """`attn` checked against what the model class supports; None = transformers' own pick on a GPU (SDPA
    where the model supports it, eager otherwise: Gemma-2's softcapping has no SDPA path)."""
    cls = _model_class(arch)
    sdpa = bool(getattr(cls, "_supports_sdpa", False)) if cls is not None else True  # None: building will say
    if attn is None:
        return "sdpa" if sdpa else "eager"
    name = lookup(ATTENTION, attn, "attention implementation").name
    if name == "sdpa" and not sdpa:
        raise LabError(f"{arch.name} ({arch.model_class}) has no SDPA attention in transformers; attention 'sdpa' "
                       "is not available for it.", "Use eager attention (--attn eager).")
    return name


NO_CHECKPOINTING = ("{name} ({cls}) does not support gradient checkpointing in transformers, so the step is "
                    "simulated without it (a real run with it on stops at gradient_checkpointing_enable).")


def _model_class(arch):
    """transformers' causal-LM class for `arch`, or None where it has none (building the model says what is wrong)."""
    # transformers: 0.6 s to import; imported where used, not with this module
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(transformers_config(arch))]
    except KeyError:
        return None


def _checkpointable(arch) -> bool:
    """Does the model class support gradient checkpointing (transformers' `supports_gradient_checkpointing`;
    GPT-1, XLNet, XLM, JetMoE and a few others do not, and `gradient_checkpointing_enable` raises)?"""
    return bool(getattr(_model_class(arch), "supports_gradient_checkpointing", True))


def _check_positive(label: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LabError(f"The {label} must be a positive integer, got {value!r}.")


def _check_context(arch, tokens: int, what: str) -> None:
    limit = arch.max_position_embeddings
    if limit and int(limit) > 0 and tokens > int(limit):  # XLNet writes -1: no fixed context
        raise LabError(f"{what} is {tokens:,} tokens, beyond {arch.name}'s context of {int(limit):,} "
                       "(max_position_embeddings).", f"Use at most {int(limit):,} tokens.")


def resolve_recipe(arch, settings, device: str = "cuda") -> Recipe:
    """The concrete recipe a TrainingSettings means for this architecture, checked: a bad value raises a
    LabError that names it."""

    s = settings
    method = lookup(METHODS, s.method, "training method").name
    _check_positive("batch size", s.batch_size)
    _check_positive("sequence length", s.max_length)
    _check_context(arch, s.max_length, "The sequence length")
    optimizer = lookup(OPTIMIZERS, s.optimizer, "optimizer").name
    attn = resolve_attention(arch, s.attn)
    dtype = resolve_dtype(s.dtype, config_dtype=arch.config_dtype)
    if method == "qlora":
        precision = get_precision(s.precision or "nf4-dq")
        if not precision.quantized:
            raise LabError(f"QLoRA trains on a quantized base; precision {precision.name!r} is not quantized.",
                           "Use nf4, nf4-dq, fp4 or int8 with qlora, or --train lora for a 16/32-bit base.")
    else:
        precision = get_precision(s.precision or dtype.name)
        if precision.quantized:
            raise LabError(f"{method} trains an unquantized base; precision {precision.name!r} is quantized.",
                           "Use --train qlora for a quantized base.")
        dtype = DTYPES[precision.name]
    half = dtype.name != "fp32" if precision.quantized else precision.name != "fp32"
    if not isinstance(s.autocast, bool):
        raise LabError(f"autocast must be True or False, got {s.autocast!r}.", "Use --autocast on or off.")
    top = SETTINGS["dropout"].max  # the one bound a run's dropout has (lab.recipe)
    if isinstance(s.dropout, bool) or not isinstance(s.dropout, (int, float)) or not 0 <= s.dropout <= top:
        raise LabError(f"lora_dropout must be between 0 and {top}, got {s.dropout!r}.",
                       "Use 0 for none (peft's default), 0.05 or 0.1 as most recipes.")
    # the Trainer's bf16/fp16 flags (lab.training.runner.sft_config); off: a plain loop on the 16-bit model
    autocast = dtype.torch_dtype if half and s.autocast else None
    adapter = adapter_dtype(s, precision.quantized)
    targets: str | tuple[str, ...] = "all-linear"
    parameters: tuple[str, ...] = ()
    if method != "full":
        if isinstance(s.r, bool) or not isinstance(s.r, int) or s.r <= 0:
            raise LabError(f"LoRA rank r={s.r!r} is not a positive integer.", "Use r ≥ 1 (typical: 8, 16, 32, 64).")
        targets, parameters = peft_targets(arch, s.targets, s.r, bool(s.use_dora))
    checkpointing = bool(s.gradient_checkpointing) and _checkpointable(arch)  # else off, and simulate() says so
    return Recipe(method, precision.name, dtype.torch_dtype, autocast, DTYPES[adapter].torch_dtype,
                  bool(s.upcast_for_kbit), checkpointing, optimizer, s.batch_size, s.max_length,
                  r=s.r, alpha=float(s.alpha or 2 * s.r), dropout=0.0 if parameters else float(s.dropout),
                  targets=targets, use_dora=bool(s.use_dora), attn=attn, device=device,
                  loss=lookup(LOSSES, s.loss, "loss").name, parameters=parameters)


def peft_targets(arch, targets, r: int, use_dora: bool = False) -> tuple[str | tuple[str, ...], tuple[str, ...]]:
    """(target_modules, target_parameters) for peft: 'all-linear' as peft spells it where that means the same
    modules, else the resolved Linear names; the fused expert parameters apart. An explicitly named layer
    narrower than r is refused (broad presets leave such layers out, lab.estimate.lora.left_out), and so is DoRA
    on fused experts (peft's ParamWrapper has none)."""
    names = resolve_targets(arch, targets, r)
    experts = set(expert_names(arch))
    # a name may be both (DeepSeek-V3: the dense layers' down_proj Linear and the experts' down_proj tensor)
    modules = tuple(n for n in names if n not in experts or n in arch.linear_names)
    parameters = tuple(n for n in names if n in experts)
    if use_dora and parameters:
        raise LabError(f"DoRA cannot adapt the fused experts ({', '.join(dict.fromkeys(parameters))}): peft reaches "
                       "them through its ParamWrapper, which has no DoRA.",
                       "Turn DoRA off, or target 'attention' (or name the Linear layers) to leave the experts out.")
    if not modules and not parameters:  # a broad preset left every layer out: all are narrower than r
        w = max((min(g.in_features, g.out_features) for g in arch.linears if g.name in arch.decoder_linear_names),
                default=0)
        raise LabError(f"LoRA rank r={r} is above the width of every targeted layer (the widest has min(in, out) = "
                       f"{w}): an update of that rank cannot exist.", f"Use r ≤ {w}.")
    widest = min((min(g.in_features, g.out_features) for g in arch.linears if g.name in modules), default=0)
    if widest and r > widest:
        raise LabError(f"LoRA rank r={r} is above the width of the targeted layers (min(in, out) = {widest}): "
                       "an update of that rank cannot exist.", f"Use r ≤ {widest}.")
    is_preset = isinstance(targets, str) and targets.strip() == "all-linear"
    if is_preset and not parameters and not left_out(arch, "all-linear", r):
        return "all-linear", ()
    return modules, parameters


def transformers_config(arch):
    """The transformers config an Architecture was read from."""

    return config_from_dict(arch.config, arch.name)


def simulate(arch, settings, device: str = "cuda") -> Simulation:
    """The simulated training step of `arch` under `settings` (cached by settings)."""
    recipe = resolve_recipe(arch, settings, device)
    sim = simulate_training(transformers_config(arch), recipe, name=arch.name)
    if settings.gradient_checkpointing and not recipe.gradient_checkpointing:
        sim = replace(sim, notes=(*sim.notes, NO_CHECKPOINTING.format(name=arch.name, cls=arch.model_class)))
    return sim


@dataclass(frozen=True)
class InferenceSettings:
    """What decides generation memory."""

    precision: str = field(default="bf16", metadata={"help": "Precision of the weights (lab.vocab.PRECISIONS)."})
    dtype: str = field(default="auto", metadata={"help": "dtype of what stays unquantized and of the compute "
                                                          "(lab.vocab.DTYPE_CHOICES)."})
    batch_size: int = field(default=1, metadata={"help": "Prompts generated together."})
    prompt_tokens: int = field(default=512, metadata={"help": "Tokens per prompt (the prefill)."})
    new_tokens: int = field(default=256, metadata={"help": "Tokens generated per prompt (the KV cache grows to "
                                                            "prompt + new tokens)."})
    attn: str | None = field(default=None, metadata={"help": "Attention implementation (lab.vocab.ATTENTION); "
                                                                 "None = what transformers picks (sdpa if supported)."})


def resolve_inference(arch, settings: InferenceSettings, device: str = "cuda") -> InferenceRecipe:

    s = settings
    for label, value in (("batch size", s.batch_size), ("number of prompt tokens", s.prompt_tokens),
                         ("number of new tokens", s.new_tokens)):
        _check_positive(label, value)
    _check_context(arch, s.prompt_tokens + s.new_tokens, "Prompt + new tokens")
    precision = get_precision(s.precision)
    dtype = resolve_dtype(s.dtype, config_dtype=arch.config_dtype) if precision.quantized else DTYPES[precision.name]
    return InferenceRecipe(precision.name, dtype.torch_dtype, s.batch_size, s.prompt_tokens, s.new_tokens,
                           resolve_attention(arch, s.attn), device)


def simulate_generation(arch, settings: InferenceSettings, device: str = "cuda") -> Simulation:
    """The simulated peak of generating with `arch` under `settings` (cached by settings)."""
    recipe = resolve_inference(arch, settings, device)
    return simulate_inference(transformers_config(arch), recipe, name=arch.name)


# --------------------------------------------------------------------------- for pages
def is_cached(arch, settings, device: str = "cuda") -> bool:
    """Whether `simulate`/`simulate_generation` would answer from the cache (a page can then call it on
    its own thread instead of starting background work). Invalid settings count as cached: they fail fast."""
    try:
        if isinstance(settings, InferenceSettings):
            recipe = resolve_inference(arch, settings, device)
            key_kind = "infer"
        else:
            recipe = resolve_recipe(arch, settings, device)
            key_kind = "train"
    except LabError:
        return True
    config = transformers_config(arch)  # parsed once: this runs on every rerun of a page, twice
    full = _num_layers(config)
    key = (key_kind, arch.name, config.to_json_string(use_diff=False), recipe, min(full, comp.SIMULATED_LAYERS))
    with _CACHE_LOCK:
        return key in _CACHE


@dataclass(frozen=True)
class PageSimulations:
    """Both simulations a page shows: each a Simulation, the one-line reason it cannot be, or None when
    the page asked for other settings before it ran."""

    training: Simulation | str | None = None
    inference: Simulation | str | None = None


def simulate_page(arch, settings, inference: InferenceSettings, report=None, cancel=None) -> PageSimulations:
    """Both simulations a page shows. (`report`/`cancel` are lab.tasks.BackgroundTask's hooks: once the page asks
    for other settings, the step being simulated stops at its next layer or phase, Cancelled, and nothing is
    cached.) The training step comes first, and its result is reported as a partial result before generation is
    simulated, so a page shows the headline peak a generation step sooner (a precision change simulates both)."""
    out: dict[str, Simulation | str] = {}
    for part, run in (("training", lambda: simulate(arch, settings)),
                      ("inference", lambda: simulate_generation(arch, inference))):
        if cancel is not None and cancel.is_set():  # the page asked for other settings meanwhile
            break
        if report:
            report(f"simulating the {part} step", partial=PageSimulations(**out) if out else None)
        try:
            with cancel_on(cancel):
                out[part] = run()
        except Cancelled:
            raise
        except LabError as e:
            out[part] = str(e)
    return PageSimulations(**out)
