"""The precisions the lab can load a model at, and what each one means to transformers.

fp32/bf16/fp16 load every weight in that dtype. int8 and the 4-bit kinds go through
bitsandbytes: the decoder's Linear layers are quantized; embeddings, lm_head and norms stay
in the load dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BitsAndBytesConfig

from lab.environment import compute_dtype, device_type
from lab.errors import LabError

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    name: str
    label: str
    bits: float  # bits per quantized weight, before quantization constants
    help: str

    @property
    def quantized(self) -> bool:
        return self.name in ("int8", "nf4", "nf4-dq", "fp4")

    @property
    def four_bit(self) -> bool:
        return self.name in ("nf4", "nf4-dq", "fp4")


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "FP32", 32, "Full precision: 4 bytes per weight. The reference for quality."),
        Precision("bf16", "BF16", 16, "bfloat16: fp32's range with 8 bits of mantissa; slow on most CPUs."),
        Precision("fp16", "FP16", 16, "float16: more mantissa than bf16, less range; the T4's fast path."),
        Precision("int8", "INT8", 8, "LLM.int8(): 1 byte per weight plus an fp32 scale per output row."),
        Precision("nf4", "NF4", 4, "4-bit NormalFloat (QLoRA): 16 levels placed for normally distributed weights."),
        Precision("nf4-dq", "NF4 + double quant", 4, "NF4 whose per-block absmax constants are themselves quantized to 8 bits."),
        Precision("fp4", "FP4", 4, "4-bit floating point: 16 levels, evenly spread in exponent."),
    )
}


def get_precision(name: str) -> Precision:
    try:
        return PRECISIONS[name.lower()]
    except KeyError:
        raise LabError(f"Unknown precision {name!r}.", f"Choose one of: {', '.join(PRECISIONS)}.") from None


def resolve_dtype(name: str | None, device: str | None = None) -> torch.dtype:
    """Dtype for the unquantized parameters. 'auto'/None = the device's compute dtype."""
    if name in (None, "auto"):
        return compute_dtype(device)
    try:
        return DTYPES[name]
    except KeyError:
        raise LabError(f"Unknown dtype {name!r}.", f"Choose auto, {', '.join(DTYPES)}.") from None


def bnb_config(precision: str, device: str | None = None) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig for a precision, or None for the plain float precisions."""
    p = get_precision(precision)
    if not p.quantized:
        return None
    if p.name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if p.name == "fp4" else "nf4",
        bnb_4bit_use_double_quant=p.name == "nf4-dq",
        bnb_4bit_compute_dtype=compute_dtype(device or device_type()),
    )


def load_kwargs(precision: str, dtype: str | None = "auto", device: str | None = None) -> dict:
    """Keyword arguments for `from_pretrained` that load at `precision` on `device`."""
    device = device or device_type()
    p = get_precision(precision)
    kwargs: dict = {"device_map": {"": 0} if device == "cuda" else "cpu"}
    if p.quantized:
        kwargs["quantization_config"] = bnb_config(p.name, device)
        kwargs["dtype"] = resolve_dtype(dtype, device)
    else:
        kwargs["dtype"] = DTYPES[p.name]
    return kwargs


def bnb_config_code(precision: str, device: str | None = None, compute: torch.dtype | None = None) -> str:
    """The Python snippet a user would write for this precision (for 'copy as code' boxes).
    `compute` overrides the device's compute dtype, e.g. bf16 for a snippet meant for a GPU."""
    cfg = bnb_config(precision, device)
    if cfg is None:
        return f"dtype=torch.{str(DTYPES[precision]).removeprefix('torch.')}"
    if cfg.load_in_8bit:
        return "BitsAndBytesConfig(load_in_8bit=True)"
    compute = compute or cfg.bnb_4bit_compute_dtype
    note = "  # float16 on a T4 (no bf16)" if compute == torch.bfloat16 else ""
    return (
        "BitsAndBytesConfig(\n"
        "    load_in_4bit=True,\n"
        f'    bnb_4bit_quant_type="{cfg.bnb_4bit_quant_type}",\n'
        f"    bnb_4bit_use_double_quant={cfg.bnb_4bit_use_double_quant},\n"
        f"    bnb_4bit_compute_dtype=torch.{str(compute).removeprefix('torch.')},{note}\n"
        ")"
    )
