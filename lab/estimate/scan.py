"""Recurrent scans as they run on a GPU: mamba-ssm's selective-scan kernel and RWKV's WKV kernel, not the
per-token loops transformers falls back to without them.

transformers' Jamba and Zamba layers call `mamba_selective_scan`, which is
mamba-ssm's `selective_scan_fn` when that package is installed (the models' cards ask for it to train) and
otherwise a PyTorch loop over the tokens. On fake tensors that loop costs minutes (every token is a
dozen dispatched ops, forward, recomputation and backward), and it is not what a GPU setup runs.

On the simulation's CUDA path the function becomes `SelectiveScan`, which makes, keeps and returns
exactly the tensors mamba-ssm's `SelectiveScanFn` does (mamba_ssm/ops/selective_scan_interface.py, with
the allocations of `selective_scan_cuda.fwd/bwd` in csrc/selective_scan/selective_scan.cpp), without
values: the output and gated output like `delta` and `z`, the chunk states `x` of
(batch, dim, ceil(L / 2048), 2 · dstate) in A's dtype, contiguous copies of strided inputs, and in the
backward one gradient per input (dB, dC made in fp32, then cast back).

RWKV's attention (`rwkv_linear_attention`) runs transformers' own `RwkvLinearAttention` autograd function with
its WKV CUDA kernel when that kernel is loaded (on a GPU with ninja), else a loop over the tokens (minutes on
fake tensors: rwkv's QLoRA request passed a 300 s limit). `WKV` repeats that function's allocations line by line
(transformers/models/rwkv/modeling_rwkv.py): the fp32 time decay, contiguous (and, for fp16, fp32) copies of key
and value, the output the kernel fills, the fp32 state of (batch, hidden, 3), the saved tensors, and in the
backward one gradient per input, cast back to the input dtype.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from lab.estimate.patch import for_this_thread

CHUNK = 2048  # selective_scan.cpp: n_chunks = (seqlen + 2048 - 1) / 2048
FAMILIES = ("jamba", "zamba")  # Mamba-1 scans outside a fused mamba_inner_fn (Mamba and Falcon-Mamba fuse theirs)
NOTE = ("Mamba layers' selective scan is simulated as mamba-ssm's CUDA kernel (what transformers runs when "
        "mamba-ssm is installed); without it transformers' per-token PyTorch loop keeps every token's state "
        "for the backward and needs more memory.")
RWKV_NOTE = ("RWKV's attention is simulated as its WKV CUDA kernel (what transformers loads on a GPU with ninja); "
             "without it transformers' per-token loop keeps every token's intermediate tensors for the backward.")


def _contiguous(t):
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


class SelectiveScan(torch.autograd.Function):
    """mamba-ssm's SelectiveScanFn, allocations only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, return_last_state):
        u, delta, B, C, z = (_contiguous(t) for t in (u, delta, B, C, z))
        D = D.contiguous() if D is not None else None
        batch, dim, length = u.shape
        out = torch.empty_like(delta)
        x = torch.empty((batch, dim, -(-length // CHUNK), 2 * A.shape[-1]), dtype=A.dtype, device=u.device)
        ctx.has_z = z is not None
        result = out
        if ctx.has_z:
            result = torch.empty_like(z)
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, x, out)
        else:
            ctx.save_for_backward(u, delta, A, B, C, D, delta_bias, x)
        if return_last_state:
            return result, x[:, :, -1, 1::2]
        return result

    @staticmethod
    def backward(ctx, dout, *unused):
        saved = ctx.saved_tensors  # the chunk states and the output stay saved until the backward ends
        u, delta, A, B, C, D = saved[:6]
        z, delta_bias = saved[6:8] if ctx.has_z else (None, saved[6])
        dout = _contiguous(dout)
        du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.zeros_like(A)
        dB = torch.zeros_like(B, dtype=torch.float32).to(B.dtype)
        dC = torch.zeros_like(C, dtype=torch.float32).to(C.dtype)
        dD = torch.zeros_like(D) if D is not None else None
        ddelta_bias = torch.zeros_like(delta_bias) if delta_bias is not None else None
        dz = torch.empty_like(z) if z is not None else None
        return du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, **unused):
    """`mamba_ssm.selective_scan_fn`'s signature (transformers passes extra keywords to its fallback)."""
    return SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, return_last_state)


class WKV(torch.autograd.Function):
    """transformers' RwkvLinearAttention with its CUDA kernel, allocations only."""

    @staticmethod
    def forward(ctx, time_decay, time_first, key, value, state=None, return_state=False):
        batch, _, hidden = key.size()
        ctx.input_dtype = key.dtype
        time_decay = -torch.exp(time_decay.float().contiguous())
        if key.dtype == torch.float16:
            time_first, key, value = time_first.float(), key.float(), value.float()
        time_first, key, value = time_first.contiguous(), key.contiguous(), value.contiguous()
        output = torch.empty_like(key, memory_format=torch.contiguous_format)
        if return_state or state is not None:
            if state is None:
                state = torch.zeros(batch, hidden, 3, dtype=torch.float32, device=key.device)
            else:
                state = torch.cat([s.unsqueeze(2) for s in state], dim=2).contiguous()
        ctx.save_for_backward(time_decay, time_first, key, value, output)
        if state is not None:
            state = [s.squeeze(2) for s in torch.chunk(state, 3, dim=2)]
        return output.to(ctx.input_dtype), state

    @staticmethod
    def backward(ctx, g_output, g_state=None):
        time_decay, time_first, key, value, output = ctx.saved_tensors
        dtype = ctx.input_dtype
        g_time_decay = torch.empty_like(time_decay, dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (time_first, key, value)]
        _ = g_output.float() if dtype == torch.float16 else g_output.contiguous()
        return g_time_decay.to(dtype), *(g.to(dtype) for g in grads), None, None


def wkv(time_decay, time_first, key, value, state=None, return_state=False):
    """`rwkv_linear_attention`'s signature: the kernel for several tokens, transformers' own code for one (it
    does the same: one token needs no loop)."""
    if key.size(1) == 1:
        # transformers: 2.2 s to import; imported where used, not with this module
        from transformers.models.rwkv.modeling_rwkv import rwkv_linear_attention_cpu

        return rwkv_linear_attention_cpu(time_decay, time_first, key, value, state=state, return_state=return_state)
    return WKV.apply(time_decay, time_first, key, value, state, return_state)


@contextmanager
def scan_paths(device: str, used: list | None = None) -> Iterator[None]:
    """On the CUDA path, every loaded Mamba-1 model module's `mamba_selective_scan` is `selective_scan`, and
    RWKV's `rwkv_linear_attention` is `wkv`, for this thread; `used` gets the note of each that ran (for the
    simulation's notes)."""
    if device != "cuda":
        yield
        return

    def noting(note, fn):
        def run(*args, **kwargs):
            if used is not None and note not in used:
                used.append(note)
            return fn(*args, **kwargs)
        return run

    with ExitStack() as stack:
        for family in FAMILIES:
            module = sys.modules.get(f"transformers.models.{family}.modeling_{family}")
            if module is not None and hasattr(module, "mamba_selective_scan"):
                stack.enter_context(for_this_thread(module, "mamba_selective_scan", noting(NOTE, selective_scan)))
        rwkv = sys.modules.get("transformers.models.rwkv.modeling_rwkv")
        if rwkv is not None and hasattr(rwkv, "rwkv_linear_attention"):
            stack.enter_context(for_this_thread(rwkv, "rwkv_linear_attention", noting(RWKV_NOTE, wkv)))
        yield
