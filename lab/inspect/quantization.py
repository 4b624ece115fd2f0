"""NF4 up close: the 4-bit level tables, what each scheme does to one weight matrix, and the
quantization error of every Linear weight — all through bitsandbytes' own quantize/dequantize.

The float weights come straight from the checkpoint's safetensors (not from a loaded model), so
this works whatever precision is loaded, and compares every scheme against the same original.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from lab.errors import LabError
from lab.models.reader import read_architecture
from lab.models.sources import ModelSource, resolve_source

BLOCKSIZE = 64  # bitsandbytes' 4-bit default, what transformers' BitsAndBytesConfig uses

# Error schemes: what each does to a weight matrix, for tooltips and table headers.
SCHEMES: dict[str, str] = {
    "int8": "LLM.int8(): int8_vectorwise_quant — each row scaled by its absmax / 127 (computed from an fp16 copy).",
    "fp4": "FP4: quantize_4bit(quant_type='fp4') — blocks of 64, scaled by the block absmax, 16 float-like levels.",
    "nf4": (
        "NF4: quantize_4bit(quant_type='nf4') — blocks of 64, scaled by the block absmax, 16 normal-quantile "
        "levels."
    ),
    "nf4-dq": (
        "NF4 with double quantization: the same, with absmax itself quantized to 8 bits "
        "(compress_statistics=True)."
    ),
}


def level_tables() -> dict[str, list[float]]:
    """The 16 code values of NF4 and FP4, sorted, in units of the block absmax."""
    # bitsandbytes: 2.8 s to import; imported where used, not with this module
    import bitsandbytes.functional as F

    return {name: sorted(F.get_4bit_type(name, device="cpu").tolist()) for name in ("nf4", "fp4")}


# --------------------------------------------------------------------------- weights from the checkpoint
def _checkpoint_files(source: ModelSource) -> list[Path]:
    if source.kind in ("embedded", "folder"):
        assert source.path is not None
        folder = source.path
    elif source.kind == "hub" and source.path is not None:  # its snapshot in the local Hub cache (offline)
        folder = source.path
    elif source.kind == "hub":
        try:
            # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(source.hub_id or source.spec, allow_patterns=["*.safetensors", "*.json"],
                                            local_files_only=True))
        except Exception as e:
            raise LabError(
                f"The checkpoint of {source.display_name!r} is not in the local Hub cache ({type(e).__name__}).",
                "Load it once (with network) first, or use a local model folder.",
            ) from e
    else:
        raise LabError(f"{source.display_name} has no weights to inspect.", "Pick 'embedded' or a model folder.")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LabError(
            f"No .safetensors files in {folder}.", "Save the model with save_pretrained(safe_serialization=True)."
        )
    return files


def _weight_index(source: ModelSource) -> dict[str, tuple[Path, tuple[int, ...]]]:
    index: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in _checkpoint_files(source):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                shape = tuple(f.get_slice(name).get_shape())
                index[name] = (file, shape)
    return index


def linear_weight_names(source: ModelSource | str) -> list[str]:
    """The checkpoint's names of the Linear weights bitsandbytes would quantize, in model order. Which
    weights those are is the architecture reader's answer (transformers' own rule, as a real load)."""
    source = resolve_source(source) if isinstance(source, str) else source
    index = _weight_index(source)
    quantized = [t.path for t in read_architecture(source).tensors if t.quantized]
    names = [_checkpoint_name(path, index) for path in quantized]
    return [n for n in names if n is not None]


def _checkpoint_name(path: str, index: dict) -> str | None:
    """A module's weight under its checkpoint name: the same, or without a prefix the model adds
    (GPT-2 checkpoints say 'h.0.attn.c_attn.weight' for 'transformer.h.0.attn.c_attn.weight')."""
    if path in index:
        return path
    return next((name for name in index if path.endswith("." + name)), None)


def load_float_weight(source: ModelSource | str, name: str) -> torch.Tensor:
    """One weight from the checkpoint, as float32."""
    source = resolve_source(source) if isinstance(source, str) else source
    index = _weight_index(source)
    if name not in index:
        raise LabError(
            f"No weight named {name!r} in {source.display_name}.",
            f"Try e.g. {next(iter(linear_weight_names(source)), '?')}.",
        )
    with safe_open(str(index[name][0]), "pt") as f:
        return f.get_tensor(name).float()


def iter_float_weights(source: ModelSource | str, names: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    source = resolve_source(source) if isinstance(source, str) else source
    index = _weight_index(source)
    names = names if names is not None else linear_weight_names(source)
    for name in names:
        with safe_open(str(index[name][0]), "pt") as f:
            yield name, f.get_tensor(name).float()


# --------------------------------------------------------------------------- quantize -> dequantize
def roundtrip(weight: torch.Tensor, scheme: str, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """`weight` quantized and dequantized by bitsandbytes with `scheme` (float32 out)."""
    # bitsandbytes: 2.8 s to import; imported where used, not with this module
    import bitsandbytes.functional as F

    w = weight.detach().float().contiguous()
    if scheme == "int8":
        cb, scb, _ = F.int8_vectorwise_quant(w.half())  # what Int8Params._quantize does
        return F.int8_vectorwise_dequant(cb, scb).float()
    if scheme in ("nf4", "fp4", "nf4-dq"):
        q, state = F.quantize_4bit(
            w, blocksize=blocksize, quant_type=scheme[:3], compress_statistics=scheme == "nf4-dq"
        )
        return F.dequantize_4bit(q, state).float()
    raise LabError(f"Unknown quantization scheme {scheme!r}.", f"Choose one of: {', '.join(SCHEMES)}.")


@dataclass
class QuantError:
    rmse: float
    mean_abs: float
    max_abs: float
    relative: float  # ||W - Q(W)|| / ||W||  (Frobenius)


def quantization_error(weight: torch.Tensor, scheme: str, blocksize: int = BLOCKSIZE) -> QuantError:
    w = weight.detach().float()
    diff = roundtrip(w, scheme, blocksize) - w
    return QuantError(
        rmse=diff.pow(2).mean().sqrt().item(),
        mean_abs=diff.abs().mean().item(),
        max_abs=diff.abs().max().item(),
        relative=(diff.norm() / w.norm().clamp_min(1e-30)).item(),
    )


def layer_errors(
    source: ModelSource | str,
    schemes: tuple[str, ...] = ("int8", "fp4", "nf4", "nf4-dq"),
    names: list[str] | None = None,
    report: Callable[..., None] | None = None,
    cancel=None,
) -> list[dict]:
    """Relative quantization error of each Linear weight under each scheme. One dict per weight:
    {'name', 'layer', 'module', 'numel', '<scheme>': relative error, '<scheme>_rmse': rmse}."""
    source = resolve_source(source) if isinstance(source, str) else source
    names = names if names is not None else linear_weight_names(source)
    rows = []
    for i, (name, w) in enumerate(iter_float_weights(source, names)):
        if cancel is not None and cancel.is_set():
            break
        m = re.search(r"layers?\.(\d+)\.(.+)\.weight$", name)
        row: dict = {
            "name": name,
            "layer": int(m.group(1)) if m else -1,
            "module": m.group(2) if m else name,
            "numel": w.numel(),
        }
        for scheme in schemes:
            err = quantization_error(w, scheme)
            row[scheme] = err.relative
            row[f"{scheme}_rmse"] = err.rmse
        rows.append(row)
        if report is not None:
            report(f"quantization error: {name}", (i + 1) / len(names), partial=list(rows))
    return rows


# --------------------------------------------------------------------------- histogram
@dataclass
class WeightHistogram:
    name: str
    shape: tuple[int, ...]
    edges: list[float]  # bin edges, in units of the block absmax (-1..1)
    counts: list[int]
    raw_edges: list[float]  # the same matrix in raw weight units
    raw_counts: list[int]
    levels: dict[str, list[float]]  # NF4 and FP4 levels (block-absmax units)
    level_share: dict[str, list[float]]  # fraction of weights rounded to each level, per scheme
    median_absmax: float  # to place the levels on the raw axis: level * median block absmax
    blocksize: int

    def to_json(self) -> dict:
        return asdict(self)


def weight_histogram(
    weight: torch.Tensor, name: str = "", bins: int = 121, blocksize: int = BLOCKSIZE
) -> WeightHistogram:
    """Histogram of one matrix as the 4-bit quantizer sees it: each value divided by the absmax of
    its block of `blocksize`, so the 16 NF4/FP4 levels sit at their true positions."""
    # bitsandbytes: 2.8 s to import; imported where used, not with this module
    import bitsandbytes.functional as F

    w = weight.detach().float().contiguous()
    flat = w.reshape(-1)
    pad = (-flat.numel()) % blocksize
    blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, blocksize)
    absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    normalized = (blocks / absmax).reshape(-1)[: flat.numel()]
    counts = torch.histc(normalized, bins=bins, min=-1.0, max=1.0)
    edges = torch.linspace(-1.0, 1.0, bins + 1)
    lim = flat.abs().max().item() or 1.0
    raw_counts = torch.histc(flat, bins=bins, min=-lim, max=lim)
    raw_edges = torch.linspace(-lim, lim, bins + 1)

    levels = level_tables()
    share = {}
    for qt in ("nf4", "fp4"):
        q, _ = F.quantize_4bit(w, blocksize=blocksize, quant_type=qt)
        codes = torch.stack([q.reshape(-1) >> 4, q.reshape(-1) & 0xF], dim=1).reshape(-1)[: flat.numel()].long()
        hist = torch.bincount(codes, minlength=16).float()
        table = F.get_4bit_type(qt, device="cpu").tolist()
        order = sorted(range(16), key=lambda i: table[i])
        share[qt] = [(hist[i] / flat.numel()).item() for i in order]  # same order as level_tables()
    return WeightHistogram(
        name=name,
        shape=tuple(w.shape),
        edges=edges.tolist(),
        counts=[int(c) for c in counts.tolist()],
        raw_edges=raw_edges.tolist(),
        raw_counts=[int(c) for c in raw_counts.tolist()],
        levels=levels,
        level_share=share,
        median_absmax=absmax.median().item(),
        blocksize=blocksize,
    )


def summarize_errors(rows: list[dict], schemes: tuple[str, ...] = ("int8", "fp4", "nf4", "nf4-dq")) -> dict[str, float]:
    """numel-weighted mean relative error per scheme."""
    total = sum(r["numel"] for r in rows) or 1
    return {s: sum(r[s] * r["numel"] for r in rows if s in r) / total for s in schemes}


def errors_by_layer(rows: list[dict], schemes: tuple[str, ...] = tuple(SCHEMES)) -> list[dict]:
    """One row per decoder layer: {'layer', '<scheme>': mean relative error over that layer's Linear weights}."""
    layers: dict[int, list[dict]] = {}
    for r in rows:
        layers.setdefault(r["layer"], []).append(r)
    return [{"layer": layer, **{s: sum(r[s] for r in group) / len(group) for s in schemes}}
            for layer, group in sorted(layers.items())]

