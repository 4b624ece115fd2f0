"""Read a model's architecture without its weights.

`architecture_from_config(config)` (reached from a spec or an upload through `lab.models.reader`)
builds the model on PyTorch's meta device (shapes and dtypes, no
memory, no download) and reads every module the model really has: Linear layers grouped by
their leaf name (`q_proj`, fused `qkv_proj`, ...), embeddings, lm_head, tied weights, norms and
buffers. Nothing is tabulated by hand per architecture: a fused qkv (Phi-3), q/k/v biases
(Qwen2) or tied embeddings (Llama-3.2, Gemma) come out right because the model says so.

Which Linear layers bitsandbytes would quantize is decided with transformers' own rule
(`get_keys_to_not_convert` + `should_convert_module`, exactly what `from_pretrained` uses with
a `BitsAndBytesConfig`), so the memory estimate and a real quantized load agree.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path

from lab import policy
from lab.errors import LabError
from lab.files import write_json_atomic
from lab.paths import cache_dir


@dataclass(frozen=True)
class LinearGroup:
    """All Linear layers sharing a leaf name and shape, e.g. the 28 `q_proj` of Llama-3.2-3B."""

    name: str  # leaf name, what peft's target_modules matches: "q_proj"
    in_features: int
    out_features: int
    bias: bool
    count: int
    paths: tuple[str, ...]  # full module names, e.g. "model.layers.0.self_attn.q_proj"
    quantized: bool  # would bitsandbytes replace them (default skip rules)?
    tied: bool = False  # weight shared with another module (a tied lm_head)
    # its forward returns a tensor, so peft's LoRA layer can add its update to it: False for a router that subclasses
    # nn.Linear and returns (weights, indices) (PhiMoE's, Llama 4's)
    returns_tensor: bool = True

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features

    @property
    def params(self) -> int:
        """Parameters of all `count` layers (weights + biases)."""
        return self.count * (self.weight_params + (self.out_features if self.bias else 0))


@dataclass(frozen=True)
class TensorInfo:
    """One parameter or buffer tensor as the model registers it."""

    path: str  # "model.layers.0.input_layernorm.weight"
    shape: tuple[int, ...]
    kind: str  # linear_weight | linear_bias | embedding | norm | other | buffer
    module_type: str  # class name of the owning module
    dtype: str  # dtype on the meta model ("float32" for rotary buffers, which stay fp32)
    quantized: bool = False  # a Linear weight bitsandbytes would quantize
    persistent: bool = True  # buffers: saved in the checkpoint?

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class Architecture:
    """Everything the calculators need, read from a model built on the meta device."""

    name: str
    model_type: str
    model_class: str
    config_dtype: str  # the config's torch_dtype ("bfloat16"), what weights ship in
    params_total: int  # tied weights counted once, as model.num_parameters()
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int | None
    vocab_size: int
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    tied_pairs: tuple[tuple[str, str], ...]  # (tied param, source param)
    linears: tuple[LinearGroup, ...]  # decoder Linear groups, lm_head last if it is a Linear
    tensors: tuple[TensorInfo, ...]  # every parameter (deduplicated) and buffer
    not_converted: tuple[str, ...]  # transformers' default bnb skip list for this model
    config: dict = field(compare=False, repr=False)
    # results of pure functions of this architecture (estimates), so page reruns are instant
    memo: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def remember(self, key, compute):
        """memo[key], computed once; the memo is cleared when it grows past 4096 entries."""
        if key not in self.memo:
            if len(self.memo) > 4096:
                self.memo.clear()
            self.memo[key] = compute()
        return self.memo[key]

    # ---- convenient views --------------------------------------------------------------
    @property
    def linear_names(self) -> list[str]:
        """Leaf names peft can target (lm_head included; presets leave it out)."""
        return list(dict.fromkeys(g.name for g in self.linears))

    @property
    def decoder_linear_names(self) -> list[str]:
        return list(dict.fromkeys(g.name for g in self.linears if not g.tied and g.paths[0] != self.output_path))

    @property
    def output_path(self) -> str | None:
        """Full name of the output embedding module (lm_head), if any."""
        for g in self.linears:
            if g.name == "lm_head" or g.name.endswith("lm_head"):
                return g.paths[0]
        return None

    def params_of(self, kind: str) -> int:
        return sum(t.numel for t in self.tensors if t.kind == kind)

    @property
    def embedding_params(self) -> int:
        return self.params_of("embedding")

    @property
    def norm_params(self) -> int:
        return self.params_of("norm")

    @property
    def linear_params(self) -> int:
        return self.params_of("linear_weight") + self.params_of("linear_bias")

    @property
    def quantizable_params(self) -> int:
        """Weights bitsandbytes quantizes under the default rules (biases never are)."""
        return sum(t.numel for t in self.tensors if t.quantized)

    def summary_rows(self) -> list[dict]:
        """One row per component for tables: Linear groups, embeddings, norms, other."""
        rows = [
            {
                "component": g.name,
                "type": "Linear",
                "shape": f"{g.in_features} → {g.out_features}",
                "bias": g.bias,
                "count": g.count,
                "params": 0 if g.tied else g.params,
                "quantized": g.quantized,
                "note": "tied to the input embedding" if g.tied else "",
            }
            for g in self.linears
        ]
        by_kind: dict[str, list[TensorInfo]] = {}
        for t in self.tensors:
            if t.kind in ("embedding", "norm", "other", "expert"):
                by_kind.setdefault(t.kind, []).append(t)
        for kind, ts in by_kind.items():
            types = sorted({t.module_type for t in ts})
            rows.append(
                {
                    "component": {"embedding": "embeddings", "norm": "norms", "other": "other",
                                  "expert": "experts (fused)"}[kind],
                    "type": ", ".join(types),
                    "shape": " + ".join(sorted({"×".join(map(str, t.shape)) for t in ts})),
                    "bias": False,
                    "count": len(ts),
                    "params": sum(t.numel for t in ts),
                    "quantized": False,
                    "note": "",
                }
            )
        return rows


# --------------------------------------------------------------------------- building
_CACHE: OrderedDict[str, Architecture] = OrderedDict()
_CACHE_SIZE = 32
_LOCK = threading.Lock()


def config_from_dict(data, where: str = "config.json"):
    """A transformers config from the parsed JSON of a config.json, or a LabError naming the problem."""
    # transformers: 2.0 s to import; imported where used, not with this module
    from transformers import CONFIG_MAPPING

    if not isinstance(data, dict) or "model_type" not in data:
        raise LabError(f"{where} is not a transformers config: it has no 'model_type'.")
    data = dict(data)
    model_type = data.pop("model_type")
    if model_type not in CONFIG_MAPPING:
        raise LabError(
            f"Model type {model_type!r} in {where} is not one transformers can build.",
            "Check the 'model_type' field, or upgrade transformers.",
        )
    cls = CONFIG_MAPPING[model_type]
    try:
        # as transformers reads a config.json: `{"__float__": "Infinity"}` is the float it wrote (mamba2's
        # time_step_limit)
        config = cls.from_dict(cls._decode_special_floats(data))
    except Exception as e:  # config classes validate in many ways (strict dataclasses, asserts, ...)
        cause = e.__cause__ or e.__context__ or e
        detail = " ".join(str(cause).split())
        raise LabError(f"transformers cannot build a {model_type!r} config from {where}: {detail}") from None
    _fill_derived_sizes(config)
    _fill_top_k(config)
    return config


def _text(config):
    """The config of the text decoder: a causal LM generates from its decoder (MusicGen's config also holds a text
    encoder, and asks which one is meant)."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _read(cfg, name: str):
    """A config field, or None where the config has no single value for it (per-layer configs refuse a global
    read of a per-layer field: dots3_note's num_attention_heads, gemma4's head_dim)."""
    try:
        return vars(cfg)[name] if name in vars(cfg) else getattr(cfg, name, None)
    except AttributeError:
        return None


def _fill_derived_sizes(config) -> None:
    """Sizes a config may leave to None that every published checkpoint of the family derives the same way
    (transformers' own defaults for ministral, hunyuan_v1_dense and nemotron omit them and then cannot build):
    head_dim = hidden_size / heads, num_key_value_heads = num_attention_heads (no grouping)."""
    text = _text(config)
    own = vars(text)  # not getattr: per-layer configs (gemma4) refuse global reads of per-layer fields
    heads, hidden = own.get("num_attention_heads"), own.get("hidden_size")
    if "head_dim" in own and own["head_dim"] is None and isinstance(heads, int) and heads and isinstance(hidden, int):
        text.head_dim = hidden // heads
    if "num_key_value_heads" in own and own["num_key_value_heads"] is None and isinstance(heads, int):
        text.num_key_value_heads = heads


# Experts per token of a family whose transformers default is None (its router then calls torch.topk(k=None) and
# transformers itself cannot run the config); every published checkpoint of the family sets it: DeepSeek-V2, -V2-Lite
# and -V2.5 route each token to 6 experts (the DeepSeek-V2 paper: 6 of 160 routed experts; V2-Lite: 6 of 64).
PUBLISHED_TOP_K = {"deepseek_v2": 6}


def _fill_top_k(config) -> None:
    text = _text(config)
    if "num_experts_per_tok" in vars(text) and text.num_experts_per_tok is None \
            and config.model_type in PUBLISHED_TOP_K:
        text.num_experts_per_tok = PUBLISHED_TOP_K[config.model_type]


# Reading builds every layer of the model (on the meta device: no memory, but a few milliseconds per
# module), so the depth is bounded. The deepest published decoders have about 130 layers (Llama-3.1-405B:
# 126); past the bound a config.json is a typo or an attack, and is refused at once. The bound is the server's
# limit (policy.Limits.max_layers, QLORA_LAB_MAX_LAYERS, 1,024 unless raised): one number, raised in one place.


def check_depth(config, name: str) -> None:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", 0) or 0
    most = policy.limits().max_layers
    if isinstance(layers, int) and layers > most:
        raise LabError(f"{name} has num_hidden_layers={layers:,}: far beyond any published model (the deepest have "
                       f"about 130), so the lab does not build it.",
                       f"Check the config; the lab reads models of up to {most:,} layers (QLORA_LAB_MAX_LAYERS).")


def architecture_from_config(config, name: str) -> Architecture:
    check_depth(config, name)
    key = name + "\n" + config.to_json_string(use_diff=False)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    kept = _kept_path(key)
    arch = _read_kept(kept)
    if arch is None:
        arch = _build(config, name)
        _keep(kept, arch)
    _remember(key, arch)
    return arch


def kept_for_text(text: str, name: str) -> Architecture | None:
    """The architecture built before from a config.json with exactly this text and name, if one is kept (in this
    process, or on disk): reading it needs neither transformers' config classes nor its modelling code (a
    catalog model's `python -m lab memory` skips the ~0.7 s of transformers indexing its model folders)."""
    key = _text_key(text, name)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    arch = _read_kept(_kept_path(key))
    if arch is not None:
        _remember(key, arch)
    return arch


def keep_for_text(text: str, name: str, arch: Architecture) -> None:
    """Keep `arch`, built from a config.json with this text and name, for kept_for_text."""
    key = _text_key(text, name)
    _remember(key, arch)
    path = _kept_path(key)
    if path is not None and not path.exists():
        _keep(path, arch)


def _text_key(text: str, name: str) -> str:
    return "config.json text\n" + name + "\n" + text


def _remember(key: str, arch: Architecture) -> None:
    with _LOCK:
        _CACHE[key] = arch
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


# ---------------------------------------------------------------- kept on disk, for the next process
# Building a model on the meta device needs transformers' modelling code: about 4 of the 4.8 s that a
# `python -m lab memory` took, every time, for an answer that depends only on the config and the library
# versions. Each architecture built is kept as JSON under the lab's cache (the newest KEPT_MOST), keyed by
# the config, the name, the torch and transformers versions and the source of this module and of
# construct.py, so a newer library or a change here builds afresh. A public server keeps none (it writes
# nothing outside runs/, and its configs come from strangers). A kept file that does not read back is built
# again.
KEPT_MOST = 256


@functools.cache
def _code_version() -> str:
    here = Path(__file__).parent
    sources = b"".join((here / f).read_bytes() for f in ("architecture.py", "construct.py"))
    return "|".join([metadata.version("torch"), metadata.version("transformers"), hashlib.sha256(sources).hexdigest()])


def _kept_path(key: str) -> Path | None:
    if policy.public_mode():
        return None
    digest = hashlib.sha256((_code_version() + "\n" + key).encode()).hexdigest()[:40]
    return cache_dir() / "architectures" / f"{digest}.json"


def _read_kept(path: Path | None) -> Architecture | None:
    try:
        return architecture_from_json(json.loads(path.read_text())) if path is not None else None
    except (OSError, ValueError, TypeError, KeyError):  # none kept, or not one this code wrote: build it
        return None


def _keep(path: Path | None, arch: Architecture) -> None:
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, architecture_to_json(arch))
        kept = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-KEPT_MOST]:
            old.unlink(missing_ok=True)
    except (OSError, LabError):  # a read-only or full cache: built again next time, nothing lost
        pass


def architecture_to_json(arch: Architecture) -> dict:
    """Every field but the memo, as JSON types."""
    data = asdict(replace(arch, memo={}))
    return {f.name: data[f.name] for f in fields(arch) if f.name != "memo"}


def architecture_from_json(data: dict) -> Architecture:
    """The inverse of architecture_to_json: an Architecture equal to the one written."""
    return Architecture(**{
        **data,
        "tied_pairs": tuple(tuple(p) for p in data["tied_pairs"]),
        "linears": tuple(LinearGroup(**{**g, "paths": tuple(g["paths"])}) for g in data["linears"]),
        "tensors": tuple(TensorInfo(**{**t, "shape": tuple(t["shape"])}) for t in data["tensors"]),
        "not_converted": tuple(data["not_converted"]),
    })


def warm_imports(model_type: object) -> None:
    """Import transformers' config and causal-LM classes for `model_type` now (its own code, picked from its
    own tables by name), so that a time budget on building a model counts the building, not a first import
    that takes seconds on a loaded machine. Unknown types are left to the build to report."""
    # transformers: 2.0 s to import; imported where used, not with this module
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        MODEL_FOR_CAUSAL_LM_MAPPING[CONFIG_MAPPING[model_type]]
    except Exception:  # not a str, unknown, or no causal-LM class: the build says so, in words
        pass


def _meta_model(config):
    # torch and transformers: 1.7 s to import; imported where used, not with this module
    import torch
    from transformers import AutoModelForCausalLM

    from lab.models.construct import constructing  # here: it imports torch, which this module leaves to builds

    config = copy.deepcopy(config)  # from_config may write into it (dtype, attn implementation)
    try:
        with constructing(), torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise LabError(
                f"Model type {config.model_type!r} has no causal-LM class in transformers, so it cannot be built "
                "as a text generator.",
                "Use a decoder-only model config (llama, qwen2, mistral, phi3, gemma2, ...).",
            ) from None
        raise LabError(f"transformers cannot build model type {config.model_type!r} from this config: "
                       + " ".join(str(e).split())) from None
    except ImportError as e:  # a part of the model needs a package the lab does not install (gemma3n: timm)
        raise LabError(f"transformers cannot build model type {config.model_type!r} here: "
                       + " ".join(str(e).split()).split(". ")[0] + ".",
                       "The lab installs no optional model packages; use a model type without that part.") from None
    except (TypeError, AttributeError, KeyError, AssertionError, RuntimeError, ZeroDivisionError) as e:
        raise LabError(
            f"transformers cannot build model type {config.model_type!r} from this config "
            f"({type(e).__name__}: {' '.join(str(e).split())}).",
            "Check the config's sizes (hidden_size, num_attention_heads, ...).",
        ) from None


def _build(config, name: str) -> Architecture:
    # transformers: 2.7 s to import; imported where used, not with this module
    from transformers.quantizers.base import get_keys_to_not_convert

    # read the config's dtype first: building with dtype=float32 overwrites config.dtype
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    model = _meta_model(config)
    not_converted = tuple(sorted(get_keys_to_not_convert(model)))
    tied_pairs = tuple(sorted((getattr(model, "all_tied_weights_keys", None) or {}).items()))
    linears = _linear_groups(model, {k.removesuffix(".weight") for k, _ in tied_pairs}, not_converted)
    arch = Architecture(
        name=name,
        model_type=config.model_type,
        model_class=type(model).__name__,
        config_dtype=str(dtype).removeprefix("torch."),
        params_total=int(model.num_parameters()),
        **_shape_fields(config),
        tie_word_embeddings=bool(tied_pairs),
        tied_pairs=tied_pairs,
        linears=tuple(linears),
        tensors=tuple(_tensors(model, not_converted)),
        not_converted=not_converted,
        config=config.to_dict(),
    )
    del model
    return arch


def _linear_kind(module) -> tuple[bool, bool, bool]:
    """(is a Linear, is GPT-2's Conv1D, is one bnb quantizes). peft adapts any nn.Linear, subclasses included;
    transformers' bnb quantizer converts only an exact nn.Linear or a Conv1D (`type(module) is nn.Linear`), so
    Falcon's FalconLinear stays in the compute dtype at nf4 and is still a LoRA target. Conv1D's weight is in × out."""
    # torch and transformers: 1.6 s to import; imported where used, not with this module
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    is_conv1d = isinstance(module, Conv1D)
    return isinstance(module, nn.Linear) or is_conv1d, is_conv1d, type(module) is nn.Linear or is_conv1d


def _returns_tensor(module) -> bool:
    """Does this Linear's forward return a tensor? nn.Linear's does; a subclass with its own (a router that returns
    routing weights and expert indices) is called once on two rows of zeros on its weight's device (meta while
    the architecture is read: no compute). A call that fails says nothing, and the layer stays a target."""
    # torch: 1.0 s to import; imported where used, not with this module
    import torch
    from torch import nn

    if type(module).forward is nn.Linear.forward:
        return True
    w = module.weight
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, module.in_features, device=w.device, dtype=w.dtype))
    except Exception:  # noqa: BLE001 - any failure: unknown, leave it as peft would take it
        return True
    return isinstance(out, torch.Tensor)


def _linear_groups(model, tied_targets: set[str], not_converted: tuple[str, ...]) -> list[LinearGroup]:
    """Linear layers grouped by (leaf name, fan in, fan out, bias): decoder groups in model order, lm_head last."""
    # transformers: 2.9 s to import; imported where used, not with this module
    from transformers.quantizers.quantizers_utils import should_convert_module

    groups: dict[tuple, list[str]] = {}
    group_tied: dict[tuple, bool] = {}
    group_quant: dict[tuple, bool] = {}
    group_tensor: dict[tuple, bool] = {}
    tried: dict[type, bool] = {}  # one trial call per Linear subclass
    for mod_name, module in model.named_modules():
        is_linear, is_conv1d, quantizable = _linear_kind(module)
        if not is_linear:
            continue
        fan_in, fan_out = (
            (module.weight.shape[0], module.nf) if is_conv1d else (module.in_features, module.out_features)
        )
        key = (mod_name.rsplit(".", 1)[-1], int(fan_in), int(fan_out), module.bias is not None)
        groups.setdefault(key, []).append(mod_name)
        group_tied[key] = group_tied.get(key, False) or mod_name in tied_targets
        group_quant[key] = (group_quant.get(key, True) and quantizable
                            and should_convert_module(mod_name, list(not_converted)))
        if type(module) not in tried:
            tried[type(module)] = is_conv1d or _returns_tensor(module)
        group_tensor[key] = group_tensor.get(key, True) and tried[type(module)]
    linears = [
        LinearGroup(leaf, i, o, bias, len(paths), tuple(paths), group_quant[key], group_tied[key], group_tensor[key])
        for key, paths in groups.items()
        for (leaf, i, o, bias) in [key]
    ]
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    out_names = {n for n, m in model.named_modules() if out_emb is not None and m is out_emb}
    linears.sort(key=lambda g: g.paths[0] in out_names)
    return linears


def _tensors(model, not_converted: tuple[str, ...]) -> list[TensorInfo]:
    """Every parameter (a tied weight once, as num_parameters() counts it) and buffer, with its kind."""
    # torch and transformers: 2.9 s to import; imported where used, not with this module
    from torch import nn
    from transformers.quantizers.quantizers_utils import should_convert_module

    tensors: list[TensorInfo] = []
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        mtype = type(module).__name__
        is_linear, _, quantizable = _linear_kind(module)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if is_linear:
                kind = "linear_weight" if pname == "weight" else "linear_bias"
            elif isinstance(module, nn.Embedding):
                kind = "embedding"
            elif p.dim() == 3 and "expert" in f"{mod_name}.{mtype}".lower():
                # a fused mixture-of-experts projection (experts × in × out, lab.estimate.experts): in an experts
                # module by path or class (GraniteMoE's live in block_sparse_moe.input_linear, a ParallelExperts);
                # XLNet's attention keeps q, k, v as 3-D parameters too, and they are not experts
                kind = "expert"
            else:
                kind = "norm" if "norm" in mtype.lower() else "other"
            quantized = quantizable and pname == "weight" and should_convert_module(mod_name, list(not_converted))
            full = f"{mod_name}.{pname}" if mod_name else pname
            tensors.append(TensorInfo(full, tuple(p.shape), kind, mtype, _dtype_name(p), quantized))
        non_persistent = getattr(module, "_non_persistent_buffers_set", set())
        for bname, b in module.named_buffers(recurse=False):
            full = f"{mod_name}.{bname}" if mod_name else bname
            tensors.append(TensorInfo(full, tuple(b.shape), "buffer", mtype, _dtype_name(b),
                                      persistent=bname not in non_persistent))
    return tensors


def _dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _shape_fields(config) -> dict:
    """The text model's sizes (a multimodal config keeps them in its text config)."""
    cfg = _text(config)
    heads = int(_read(cfg, "num_attention_heads") or 0)
    hidden = int(_read(cfg, "hidden_size") or 0)
    head_dim = vars(cfg).get("head_dim") or (hidden // heads if heads else 0)
    return dict(
        num_layers=int(_read(cfg, "num_hidden_layers") or 0),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=int(_read(cfg, "num_key_value_heads") or heads),
        head_dim=int(head_dim),
        intermediate_size=_read(cfg, "intermediate_size"),
        vocab_size=int(_read(cfg, "vocab_size") or 0),
        max_position_embeddings=_read(cfg, "max_position_embeddings"),
    )


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()
