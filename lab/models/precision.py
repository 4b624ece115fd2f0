"""What a precision means to transformers and bitsandbytes: the load arguments, the
BitsAndBytesConfig, and the dtype of what stays unquantized.

fp32/bf16/fp16 load every weight in that dtype. int8 and the 4-bit kinds go through
bitsandbytes: the decoder's Linear layers are quantized; embeddings, lm_head and norms stay
in the load dtype. The precisions and dtypes themselves are tables in `lab.vocab`.

torch and transformers are imported only where a function needs them: the weights estimate reads precisions and
dtypes from here, and `python -m lab memory` (weights only) starts without either (~2.5 s of imports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lab.vocab import AUTO, COMPUTE, DTYPE_CHOICES, DTYPES, PRECISIONS, Dtype, Precision, dtype_by_torch_name, lookup

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig


def get_precision(name: str) -> Precision:
    return lookup(PRECISIONS, name, "precision")


def resolve_dtype(choice: str | None, *, config_dtype: str | None = None, device: str | None = None) -> Dtype:
    """A dtype choice (see `lab.vocab.DTYPE_CHOICES`) made concrete.

    'auto' = the checkpoint's dtype (`config_dtype`, e.g. the config's torch_dtype 'bfloat16'; fp32
    when the config names none); 'compute' (or None) = the compute dtype of `device`.
    """
    choice = lookup(DTYPE_CHOICES, COMPUTE if choice is None else choice, "dtype").name
    if choice == AUTO:
        return dtype_by_torch_name(config_dtype) if config_dtype and config_dtype != "auto" else DTYPES["fp32"]
    if choice == COMPUTE:
        from lab.environment import compute_dtype  # why: torch; only the compute dtype asks the device

        return dtype_by_torch_name(str(compute_dtype(device)))
    return DTYPES[choice]


def cpu_repacks_4bit() -> bool:
    """Whether bitsandbytes repacks 4-bit layers for its fused CPU kernel at the first inference forward
    (an AVX512-BF16 CPU); elsewhere the loaded layout stays (see lab/estimate/weights.py)."""
    import bitsandbytes.functional as F  # bitsandbytes' import is heavy: only when a CPU forward is predicted

    return bool(F.has_avx512bf16())


def slow_on(precision: str, device: str | None = None) -> bool:
    """bf16/fp16 on a CPU: most CPUs have no fast half-precision matmul (~20x slower than fp32)."""
    from lab.environment import device_type  # why: torch

    return get_precision(precision).name in ("bf16", "fp16") and (device or device_type()) == "cpu"


def bnb_config(precision: str, device: str | None = None) -> BitsAndBytesConfig | None:
    """The BitsAndBytesConfig for a precision, or None for the plain float precisions."""
    p = get_precision(precision)
    if not p.quantized:
        return None
    from transformers import BitsAndBytesConfig  # why: transformers' top level, for a load only

    from lab.environment import compute_dtype, device_type  # why: torch

    if p.name == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="fp4" if p.name == "fp4" else "nf4",
        bnb_4bit_use_double_quant=p.name == "nf4-dq",
        bnb_4bit_compute_dtype=compute_dtype(device or device_type()),
    )


def load_kwargs(precision: str, dtype: str | None = COMPUTE, device: str | None = None) -> dict:
    """Keyword arguments for `from_pretrained` that load at `precision` on `device`. `dtype` is the
    dtype choice for what bitsandbytes leaves unquantized ('auto' lets transformers read the checkpoint's)."""
    from lab.environment import device_type  # why: torch

    device = device or device_type()
    p = get_precision(precision)
    kwargs: dict = {"device_map": {"": 0} if device == "cuda" else "cpu"}
    if p.quantized:
        kwargs["quantization_config"] = bnb_config(p.name, device)
        kwargs["dtype"] = "auto" if dtype == AUTO else resolve_dtype(dtype, device=device).torch_dtype
    else:
        kwargs["dtype"] = DTYPES[p.name].torch_dtype
    return kwargs


def bnb_config_code(precision: str, device: str | None = None, compute: torch.dtype | None = None) -> str:
    """The Python snippet a user would write for this precision (for 'copy as code' boxes).
    `compute` overrides the device's compute dtype, e.g. bf16 for a snippet meant for a GPU."""
    cfg = bnb_config(precision, device)
    if cfg is None:
        return f"dtype=torch.{DTYPES[precision].torch_name}"
    if cfg.load_in_8bit:
        return "BitsAndBytesConfig(load_in_8bit=True)"
    import torch  # why: heavy; a snippet is asked for beside a load or a simulation, which import it anyway

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
