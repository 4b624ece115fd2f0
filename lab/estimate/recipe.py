"""The Training page's recipe, step by step, for a model that is real or fake.

The same functions prepare a fake model (the simulation) and a real one (the check on this machine),
so "simulated" and "measured" differ only in whether tensors hold data. They follow what a run of
`lab.training.runner.train` does on a GPU:

1. load: the base at its precision (`lab.models.precision.load_kwargs`): 4-bit/int8 Linear layers through
   bitsandbytes, everything else in the load dtype;
2. `runner.add_lora`: for a quantized base `peft.prepare_model_for_kbit_training` (freezes the base,
   casts every non-4-bit fp16/bf16 parameter to fp32, makes the input embeddings' output require
   grad), then `LoraConfig(r, alpha, dropout, targets, DoRA, bias="none")` + `get_peft_model`
   (adapters in fp32: peft's `autocast_adapter_dtype=True`);
3. TRL's `SFTTrainer`: casts the adapters of a quantized model to bf16 (sft_trainer.py, "the PEFT
   adapter weights are converted to bf16"), `enable_input_require_grads()` with checkpointing, and
   a fused LM head that computes per-token log-probabilities in chunks instead of the full logits
   (`trl.trainer.utils.add_fused_lm_head`);
4. the Trainer: activation checkpointing (non-reentrant), bf16/fp16 autocast around the forward and
   loss when the base is not fp32, `loss.backward()`, gradient clipping at 1.0, `optimizer.step()`,
   `zero_grad(set_to_none=True)`. The optimizer is whatever `transformers.Trainer` builds for the
   name (`Trainer.get_optimizer_cls_and_kwargs`).
"""

from __future__ import annotations

import re
import threading
import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from lab.errors import LabError
from lab.estimate.experts import as_written
from lab.estimate.tracker import NO_LAYER, LiveBytes

_TRL_IMPORT = threading.Lock()


def trl_trainer():
    """TRL's SFTConfig and SFTTrainer, with trl.trainer.utils (the fused LM head the simulation runs), imported one
    thread at a time: every first import of TRL in the lab goes through here. Two threads importing TRL's modules
    for the first time at once (a server's simulation thread and a page importing the runner to merge; a run's
    prediction thread and its main thread) can meet each other's modules half-initialised, since Python lets one
    of two threads importing a cycle of modules go on with a partial one: "cannot import name 'SFTTrainer' from
    'trl'" ended a run that way (a loaded suite run, 2026-12-06). Free after the first call."""
    with _TRL_IMPORT:
        # TRL: 3.5 s to import; imported where used, not with this module
        import trl.trainer.utils  # noqa: F401
        from trl import SFTConfig, SFTTrainer
    return SFTConfig, SFTTrainer


MAX_GRAD_NORM = 1.0  # TrainingArguments.max_grad_norm default
LEARNING_RATE = 2e-4


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the memory of one training step, resolved to concrete values."""

    method: str  # full | lora | qlora
    precision: str  # fp32 | bf16 | fp16 | int8 | nf4 | nf4-dq | fp4
    dtype: torch.dtype  # load dtype of everything bitsandbytes does not quantize
    autocast: torch.dtype | None  # mixed-precision compute dtype (None: no autocast)
    adapter_dtype: torch.dtype  # trainable LoRA weights
    kbit_upcast: bool  # prepare_model_for_kbit_training's fp32 cast of non-quantized weights
    gradient_checkpointing: bool
    optimizer: str  # a transformers `optim` name
    batch_size: int
    max_length: int
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    targets: str | tuple[str, ...] = "all-linear"  # peft's target_modules: "all-linear" or resolved leaf names
    use_dora: bool = False
    attn: str = "sdpa"
    device: str = "cuda"  # whose code paths: "cuda" predicts a GPU, "cpu" is this machine
    loss: str = "fused"  # lab.vocab.LOSSES: TRL's chunked log-probabilities, or transformers' loss on full logits
    parameters: tuple[str, ...] = ()  # peft's target_parameters: fused expert tensors (lab.estimate.experts)

    @property
    def quantized(self) -> bool:
        return self.precision in ("int8", "nf4", "nf4-dq", "fp4")

    @property
    def paged(self) -> bool:
        return self.optimizer.startswith("paged_")


# --------------------------------------------------------------------------- model preparation
def prepare_for_training(model, recipe: Recipe):
    """Steps 2 and 3 above on a loaded (or fake-loaded) base; returns the model to train."""
    # peft: 3.2 s to import; imported where used, not with this module
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if recipe.method == "full":
        model.requires_grad_(True)
    else:
        if recipe.quantized and recipe.kbit_upcast:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing)
        else:
            model.requires_grad_(False)
        lora = LoraConfig(
            r=recipe.r,
            lora_alpha=recipe.alpha,
            lora_dropout=recipe.dropout,
            target_modules=recipe.targets if isinstance(recipe.targets, str) else (list(recipe.targets) or None),
            target_parameters=list(recipe.parameters) or None,
            use_dora=recipe.use_dora,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with as_written():
            model = get_peft_model(model, lora)
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_magnitude_vector" not in name and p.dtype != recipe.adapter_dtype:
                p.data = p.data.to(recipe.adapter_dtype)
    if recipe.gradient_checkpointing:
        model.activation_checkpointing_enable() if hasattr(model, "activation_checkpointing_enable") else \
            model.gradient_checkpointing_enable()
        if recipe.method != "full":
            model.enable_input_require_grads()
    if recipe.loss == "fused":
        trl_trainer()
        # TRL: 3.3 s to import; imported where used, not with this module
        from trl.trainer.utils import add_fused_lm_head

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    model.train()
    return model


def make_optimizer(model, recipe: Recipe):
    """The optimizer `transformers.Trainer` builds for `recipe.optimizer`. Paged bitsandbytes
    optimizers keep their state in CUDA unified memory, outside PyTorch's allocator; the simulation
    builds the unpaged twin (same state tensors) and files that state as 'paged'."""
    # transformers: 3.8 s to import; imported where used, not with this module
    from transformers import Trainer

    args = types.SimpleNamespace(optim=recipe.optimizer, learning_rate=LEARNING_RATE, adam_beta1=0.9,
                                 adam_beta2=0.999, adam_epsilon=1e-8, optim_args=None)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    kwargs = dict(kwargs)
    if recipe.paged:
        kwargs["is_paged"] = False
    if cls in (torch.optim.AdamW, torch.optim.SGD) and recipe.device == "cuda":
        kwargs["foreach"] = True  # torch's default for CUDA tensors (optimizer._default_to_fused_or_foreach)
    params = [p for p in model.parameters() if p.requires_grad]
    return cls(params, **kwargs)


# --------------------------------------------------------------------------- layer markers
def decoder_layers(model) -> list[torch.nn.Module]:
    """The model's repeated decoder blocks (the ModuleList of num_hidden_layers entries)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    own = vars(config).get("decoder_layers")  # BART-style causal LMs run the decoder's layers
    n = int(own if isinstance(own, int) else config.num_hidden_layers)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n and n > 0:
            return list(module)
    # not a bug: the simulation composes the full depth from repeated blocks, and this model keeps none in a list
    raise LabError(f"{model.config.model_type!r} cannot be simulated: the lab finds no list of its {n} decoder blocks "
                   "(num_hidden_layers) to compose the full depth from.",
                   "The weights estimate still applies; simulation supports decoder-only models whose blocks are a "
                   "ModuleList.")


def layer_owner_map(model) -> dict[int, int]:
    """id(parameter or buffer) -> index of the decoder layer holding it."""
    owners = {}
    for j, layer in enumerate(decoder_layers(model)):
        for t in list(layer.parameters()) + list(layer.buffers()):
            owners[id(t)] = j
    return owners


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


@contextmanager
def layer_markers(model, tracker: LiveBytes, step: int, profile_layer: int | None = None):
    """Tell the tracker which decoder layer runs, in the forward (module hooks) and in the backward
    (a hook on each layer's output gradient; one on layer 0's input marks the end of the layers)."""
    layers = decoder_layers(model)
    last = len(layers) - 1
    handles = []

    def on_output_grad(j):
        def hook(grad):
            tracker.segment(("B", j, step))
            tracker.phase, tracker.owner = "backward", j
        return hook

    def on_input_grad(grad):
        tracker.segment(("post", step))
        tracker.phase, tracker.owner = "backward", NO_LAYER

    def pre(j):
        def hook(module, args, kwargs):
            if _in_backward():
                return
            tracker.segment(("F", j, step))
            tracker.phase, tracker.owner = "forward", j
            x = args[0] if args else kwargs.get("hidden_states")
            if j == 0 and isinstance(x, torch.Tensor) and x.requires_grad:
                handles.append(x.register_hook(on_input_grad))
        return hook

    def post(j):
        def hook(module, args, kwargs, output):
            if _in_backward():
                return
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.requires_grad:
                handles.append(out.register_hook(on_output_grad(j)))
            if j == last:
                tracker.segment(("head", step))
                tracker.owner = NO_LAYER
        return hook

    for j, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(pre(j), with_kwargs=True))
        handles.append(layer.register_forward_hook(post(j), with_kwargs=True))
    if tracker.ops is not None:  # every module call, for the Python a CPU runs between ops (lab.estimate.work)
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(
                lambda module, args: tracker.ops.record_module(tracker.phase, tracker.owner)))
    if profile_layer is not None and profile_layer <= last:
        handles += _module_profiler(layers[profile_layer], tracker)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _module_profiler(layer, tracker: LiveBytes) -> list:
    """Attribute what the forward of one layer allocates to its innermost running module."""
    stack: list[str | None] = []
    handles = []
    for name, module in layer.named_modules():
        if not name or "lora_dropout" in name or re.search(r"\.(default)$", name):
            continue

        def pre(module, args, name=name):
            if not _in_backward():
                stack.append(tracker.module)
                tracker.module = name

        def post(module, args, output):
            if not _in_backward() and stack:
                tracker.module = stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return handles


# --------------------------------------------------------------------------- the step
def autocast(recipe: Recipe):
    """The Trainer's mixed precision. On the simulation's fake CPU tensors this is CPU autocast, whose
    op lists differ from CUDA's for softmax/layer_norm/exp/sum; Llama-family modelling code casts
    those explicitly, so the stored dtypes are the same."""
    if recipe.autocast is None:
        return nullcontext()
    return torch.autocast("cpu", dtype=recipe.autocast)


def train_step(model, optimizer, input_ids: torch.Tensor, recipe: Recipe, tracker: LiveBytes, step: int,
               profile_layer: int | None = None) -> None:
    """One optimizer step as TRL's SFTTrainer takes it, with the tracker told where it is."""
    params = [p for p in model.parameters() if p.requires_grad]
    with layer_markers(model, tracker, step, profile_layer):
        tracker.segment(("pre", step))
        tracker.phase, tracker.owner = "forward", NO_LAYER
        with autocast(recipe):
            loss = _loss(model, input_ids, recipe)
        tracker.segment(("head_bwd", step))
        tracker.phase, tracker.owner = "backward", NO_LAYER
        loss.backward()
        # what autograd frees when the graph goes (saved state kept outside save_for_backward) is
        # released here, for every layer at once
        tracker.segment(("post", step))
        tracker.owner = NO_LAYER
        del loss
    tracker.segment(("opt", step))
    tracker.phase, tracker.owner = "optimizer", NO_LAYER
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM, foreach=recipe.device == "cuda" or None)
    owners = layer_owner_map(model)
    for p in params:
        tracker.mark(p.grad, "gradients", owners.get(id(p), NO_LAYER))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    tracker.phase = "setup"


def initialize_optimizer_state(model, optimizer, tracker: LiveBytes, recipe: Recipe) -> None:
    """Create the optimizer's state before the tracked step, untracked, with one step on zero gradients,
    then count it. The tracked step is then the steady state every later step repeats: forward and
    backward with the optimizer state alive (the first step, which creates the state inside
    `optimizer.step()`, never goes higher)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    owners = layer_owner_map(model)
    for p, state in optimizer.state.items():
        for key, v in state.items():
            if not isinstance(v, torch.Tensor):
                continue
            if key == "step" and recipe.device == "cuda":
                continue  # torch keeps AdamW's step counter on the CPU (not capturable, not fused)
            pages_at = _pages_at(recipe, key, v)
            role = "paged" if pages_at and v.untyped_storage().nbytes() >= pages_at else "optimizer"
            tracker.register(v, role, owners.get(id(p), NO_LAYER), pages_at)  # (the replay applies the same rule)


PAGED_STATES = ("state1", "state2")
PAGED_MIN_ELEMENTS = 100_000


def _pages_at(recipe: Recipe, key: str, state: torch.Tensor) -> int:
    """The bytes from which a paged optimizer pages this state (0: never). bitsandbytes pages a state buffer
    (unified memory, outside PyTorch's allocator) only for parameters of at least 1e5 elements
    (bitsandbytes/optim/optimizer.py, get_state_buffer: `p.numel() < 1e5` gets a plain tensor); a state has its
    parameter's numel, so in bytes that is 1e5 of its elements."""
    return PAGED_MIN_ELEMENTS * state.element_size() if recipe.paged and key in PAGED_STATES else 0


def _loss(model, input_ids: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """The loss as the trainer computes it: TRL's SFTTrainer from chunked log-probabilities (and its logged
    entropy and token-accuracy sums), or transformers' Trainer from the full logits (ForCausalLMLoss)."""
    if recipe.loss == "logits":
        return model(input_ids=input_ids, labels=input_ids, use_cache=False).loss
    out = model(input_ids=input_ids, labels=input_ids, fused_lm_head=True, use_cache=False)
    loss = (-out.log_probs).sum() / torch.as_tensor(out.label_mask.sum()).clamp(min=1)
    with torch.no_grad():
        _ = (out.entropy.detach().sum(), out.is_top1.sum(), out.label_mask.sum())
    return loss


def register_model(model, tracker: LiveBytes, recipe: Recipe) -> None:
    """Count what exists before the first step: weights, quantization constants, buffers, adapters."""
    owners = layer_owner_map(model)
    trainable_role = "weights" if recipe.method == "full" else "adapters"
    for p in model.parameters():
        tracker.register(p, trainable_role if p.requires_grad else "weights", owners.get(id(p), NO_LAYER))
    for module in model.modules():
        owner = next((owners[id(p)] for p in module.parameters(recurse=False) if id(p) in owners), NO_LAYER)
        for b in module.buffers(recurse=False):
            tracker.register(b, "weights", owners.get(id(b), owner))
        for t in quant_state_tensors(module):
            tracker.register(t, "weights", owners.get(id(t), owner))


def quant_state_tensors(module) -> list[torch.Tensor]:
    """bitsandbytes state a real quantized layer keeps outside its parameters and buffers."""
    w = getattr(module, "weight", None)
    out = []
    qs = getattr(w, "quant_state", None)
    if qs is not None:
        out += [qs.absmax, qs.code, getattr(qs, "offset", None)]
        if getattr(qs, "state2", None) is not None:
            out += [qs.state2.absmax, qs.state2.code]
    state = getattr(module, "state", None)
    for name in ("CB", "SCB"):
        out.append(getattr(state, name, None) if state is not None else None)
    out.append(getattr(w, "SCB", None))
    return [t for t in out if isinstance(t, torch.Tensor)]
