"""bitsandbytes layers on fake tensors: the same storages and the same ops as a real quantized load.

`Params4bit` and `Int8Params` cannot wrap a FakeTensor, so `quantize_meta_model` lets transformers'
own `replace_with_bnb_linear` pick and replace the Linear layers (the exact rule `from_pretrained`
uses), then swaps each weight for a plain frozen parameter of the packed shape and registers the
quantization constants as buffers, so `to_empty()` turns all of them into fake tensors:

- 4-bit: packed uint8 weight (⌈n/2⌉ bytes), absmax (fp32 per 64 weights, or uint8 with double
  quant plus the nested fp32 absmax per 256 blocks, its 256-entry code and the offset) and the
  16-entry code table — what `lab.estimate.weights` counts byte by byte.
- int8: int8 weight and the fp32 `SCB` row scales.

The modules stay `bnb.nn.Linear4bit` / `bnb.nn.Linear8bitLt`, so peft wraps them in its bnb LoRA
layers as in a real QLoRA run and their own `forward` runs. Where the device decides the code path,
`Device` says which one the simulation takes:

- `gemm_4bit` on CUDA runs a fused kernel for up to 1,536 rows and dequantizes the whole weight
  (then `F.linear`) beyond that (bitsandbytes/backends/cuda/ops.py, `_gemm_4bit_custom_max_m`);
  the CPU always dequantizes (`_gemm_4bit_default_impl`). The fake kernel only returns the output,
  so the override below replays the dequantizing path where the device takes it.
- int8 training on CUDA goes through `MatMul8bitLt` (int8 matmul with outlier decomposition), on
  CPU through `MatMul8bitFp` (dequantize + matmul): `bnb.matmul` picks by the tensor's device, which
  is always "cpu" for our fake tensors, so the CUDA path is called directly.
- LLM.int8()'s outlier columns depend on the data; the simulation takes none (a handful of columns
  in practice: kilobytes).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from functools import cache, partial

import torch

from lab.estimate.patch import for_this_thread
from lab.estimate.tracker import OVERRIDES

BLOCKSIZE = 64  # bnb_4bit_blocksize default in transformers
NESTED_BLOCKSIZE = 256
GEMM_4BIT_FUSED_MAX_ROWS = 1536  # CUDA: dequantize + F.linear beyond this many rows


def quantize_meta_model(model, precision: str, compute_dtype: torch.dtype, skip_modules=None) -> list:
    """Replace the Linear layers of a meta-device model as a bitsandbytes load would, with weights
    that `to_empty()` can materialize as fake tensors. Returns the quantized modules."""
    # bitsandbytes initialises CUDA at import (2.6 s): only a simulation needs it, after a pool worker hides the GPUs
    import bitsandbytes as bnb
    from transformers import BitsAndBytesConfig
    from transformers.integrations import replace_with_bnb_linear
    from transformers.quantizers.base import get_keys_to_not_convert

    register_overrides()
    if precision == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if precision == "fp4" else "nf4",
                                    bnb_4bit_use_double_quant=precision == "nf4-dq",
                                    bnb_4bit_compute_dtype=compute_dtype)
    skip = list(skip_modules) if skip_modules is not None else get_keys_to_not_convert(model)
    replace_with_bnb_linear(model, modules_to_not_convert=skip, quantization_config=config)
    modules = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    for m in modules:
        if isinstance(m, bnb.nn.Linear4bit):
            _pack_4bit(m, precision, compute_dtype)
        else:
            _pack_int8(m)
    # what transformers' quantizers set after loading, read by peft and TRL
    model.is_loaded_in_4bit = precision != "int8"
    model.is_loaded_in_8bit = precision == "int8"
    model.quantization_method = "bitsandbytes"
    # transformers: 1.5 s to import; imported where used, not with this module
    from transformers.quantizers.base import _assign_is_quantized

    _assign_is_quantized(model)  # config._is_quantized: Jamba's mamba mixer then calls dt_proj as a module
    return modules


def _meta(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _pack_4bit(m, precision: str, compute_dtype: torch.dtype) -> None:
    n = m.in_features * m.out_features
    blocks = math.ceil(n / BLOCKSIZE)
    nested = precision == "nf4-dq"
    m.weight = torch.nn.Parameter(_meta(((n + 1) // 2, 1), torch.uint8), requires_grad=False)
    m.register_buffer("fake_absmax", _meta((blocks,), torch.uint8 if nested else torch.float32), persistent=False)
    m.register_buffer("fake_code", _meta((16,), torch.float32), persistent=False)
    if nested:
        m.register_buffer("fake_absmax2", _meta((math.ceil(blocks / NESTED_BLOCKSIZE),), torch.float32),
                          persistent=False)
        m.register_buffer("fake_code2", _meta((256,), torch.float32), persistent=False)
        m.register_buffer("fake_offset", _meta((), torch.float32), persistent=False)
    m.fake_precision = precision
    m.fake_compute_dtype = compute_dtype
    attach_quant_state(m)


def _pack_int8(m) -> None:
    m.weight = torch.nn.Parameter(_meta((m.out_features, m.in_features), torch.int8), requires_grad=False)
    m.register_buffer("fake_scb", _meta((m.out_features,), torch.float32), persistent=False)
    attach_quant_state(m)


def attach_quant_state(m) -> None:
    """(Re)build the weight's quantization state from the module's buffers: after `to_empty()`
    the weight and buffers are new (fake) tensors."""
    # bitsandbytes initialises CUDA at import (2.0 s): only a simulation needs it, after a pool worker hides the GPUs
    import bitsandbytes as bnb
    from bitsandbytes.functional import QuantState

    w = m.weight
    if isinstance(m, bnb.nn.Linear8bitLt):
        w.CB, w.SCB = None, None  # Linear8bitLt.forward reads them; the state holds the real ones
        m.state.CB, m.state.SCB = w.data, m.fake_scb
        m.state.has_fp16_weights = False
        return
    state2 = None
    if m.fake_precision == "nf4-dq":
        state2 = QuantState(absmax=m.fake_absmax2, code=m.fake_code2, blocksize=NESTED_BLOCKSIZE, dtype=torch.float32)
    quant_type = "fp4" if m.fake_precision == "fp4" else "nf4"
    w.quant_state = QuantState(
        absmax=m.fake_absmax, shape=torch.Size([m.out_features, m.in_features]), code=m.fake_code,
        blocksize=BLOCKSIZE, quant_type=quant_type, dtype=m.fake_compute_dtype,
        offset=getattr(m, "fake_offset", None), state2=state2,
    )
    w.quant_type, w.compress_statistics, w.blocksize, w.bnb_quantized = quant_type, state2 is not None, BLOCKSIZE, True
    w.quant_storage = torch.uint8
    w.module = m
    m.quant_state = w.quant_state
    m.support_avx512bf16_for_cpu = False  # the CPU inference repack is a CPU-only layout change
    # Linear4bit's first forward casts its bias to the compute dtype for good (bitsandbytes/nn/modules.py,
    # Linear4bit.forward: `bias.data = bias.data.to(x.dtype)`, x already in compute_dtype), after
    # prepare_model_for_kbit_training upcast it to fp32. Done here, the simulated step is every later step of a
    # run, as it says, whether or not this model was stepped before (a reused fake model, lab.estimate.simulate):
    # a model's first simulation and its next ones allocate the same tensors, so they replay into each other.
    compute = getattr(m, "compute_dtype", None)
    if m.bias is not None and compute is not None and m.bias.dtype != compute:
        m.bias.data = m.bias.data.to(compute)


def quant_storages(m) -> list[torch.Tensor]:
    """The tensors a quantized module holds besides its weight (what a real load keeps alive)."""
    return [b for name, b in m.named_buffers(recurse=False) if name.startswith("fake_")]


# --------------------------------------------------------------------------- device code paths
class Device:
    """Which device's code paths the simulation takes ("cuda": predict a GPU; "cpu": this machine)."""

    current = "cuda"


@contextmanager
def device_paths(device: str):
    """Take `device`'s code paths in bitsandbytes while the simulation runs."""
    # bitsandbytes initialises CUDA at import (2.2 s): only a simulation needs it, after a pool worker hides the GPUs
    import bitsandbytes as bnb
    from bitsandbytes.autograd import _functions as bnb_fn

    register_overrides()

    def cuda_matmul(A, B, out=None, state=None, threshold=0.0, bias=None):
        state = state or bnb_fn.MatmulLtState()
        if threshold > 0.0:
            state.threshold = threshold
        return bnb_fn.MatMul8bitLt.apply(A, B, out, bias, state)

    previous = Device.current
    Device.current = device
    with ExitStack() as stack:
        if device == "cuda":  # Linear8bitLt.forward calls bnb.matmul, which routes CPU tensors elsewhere
            stack.enter_context(for_this_thread(bnb, "matmul", cuda_matmul))
        stack.enter_context(fake_dequantize())
        try:
            yield
        finally:
            Device.current = previous


@contextmanager
def fake_dequantize():
    """peft dequantizes a fake-quantized layer as it would the real one (`_dequantize`), in this thread while the
    block runs: DoRA does so when it builds its magnitude and on every forward."""
    # peft imports bitsandbytes, which initialises CUDA: not in the pool's forkserver, which imports this module
    from peft.tuners.lora import dora

    original = dora.dequantize_module_weight
    with for_this_thread(dora, "dequantize_module_weight", partial(_dequantize, original)):
        yield


def _dequantize(original, module):
    """peft's `dequantize_module_weight` (DoRA dequantizes its base weight on every forward) for a fake-quantized
    layer: peft tells a 4-bit or 8-bit weight by its class (Params4bit, Int8Params), which a fake tensor does not
    keep, and would take the packed 4-bit storage for the weight itself. The same bitsandbytes calls it makes."""
    # bitsandbytes initialises CUDA at import (2.0 s): only a simulation needs it, after a pool worker hides the GPUs
    import bitsandbytes as bnb

    w = module.weight
    if getattr(module, "fake_precision", None):  # (the module's state: DoRA dequantizes a deep copy of the layer,
        return bnb.functional.dequantize_4bit(w, module.quant_state)  # whose weight lost the attribute)
    if hasattr(module, "fake_scb"):
        return bnb.functional.int8_vectorwise_dequant(w, module.state.SCB)
    return original(module)


def _gemm_4bit(tracker, func, args, kwargs):
    A = args[0]
    rows = A.numel() // A.shape[-1]
    if Device.current == "cuda" and rows <= GEMM_4BIT_FUSED_MAX_ROWS:
        return func(*args, **kwargs)  # the fused kernel: only the output
    # bitsandbytes initialises CUDA at import (2.1 s): only a simulation needs it, after a pool worker hides the GPUs
    from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl

    with tracker:  # count the dequantized weight (and absmax) it allocates
        return _gemm_4bit_default_impl(*args, **kwargs)


def _empty(*shape, dtype, like):
    return torch.empty(shape, dtype=dtype, device=like.device)


def _int8_vectorwise_quant(tracker, func, args, kwargs):
    A = args[0]
    rows = A.numel() // A.shape[-1]
    return _empty(*A.shape, dtype=torch.int8, like=A), _empty(rows, dtype=torch.float32, like=A), \
        _empty(0, dtype=torch.int64, like=A)


def _int8_double_quant(tracker, func, args, kwargs):
    A = args[0]
    rows, cols = A.numel() // A.shape[-1], A.shape[-1]
    return (_empty(rows, cols, dtype=torch.int8, like=A), _empty(rows, cols, dtype=torch.int8, like=A),
            _empty(rows, dtype=torch.float32, like=A), _empty(cols, dtype=torch.float32, like=A),
            _empty(0, dtype=torch.int64, like=A))


def _int8_mixed_scaled_mm(tracker, func, args, kwargs):
    A, CB = args[0], args[2]
    rows = A.numel() // A.shape[-1]
    return _empty(rows, CB.shape[0], dtype=A.dtype, like=A), _empty(rows, 0, dtype=A.dtype, like=A)


@cache
def register_overrides() -> None:
    """The overrides above, registered on the first simulation rather than at import: importing bitsandbytes
    is about half of `python -m lab memory`'s start-up, which a weights-only answer does without."""
    import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)

    ops = torch.ops.bitsandbytes
    OVERRIDES[ops.gemm_4bit.default] = _gemm_4bit
    OVERRIDES[ops.int8_vectorwise_quant.default] = _int8_vectorwise_quant
    OVERRIDES[ops.int8_double_quant.default] = _int8_double_quant
    OVERRIDES[ops.int8_mixed_scaled_mm.default] = _int8_mixed_scaled_mm

