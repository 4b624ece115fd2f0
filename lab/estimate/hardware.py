"""What a GPU can do per second: peak dense 16-bit and fp32 FLOP/s, memory bandwidth, interconnect.

Every figure is the vendor's datasheet number (dense, no sparsity); the GPU names are those of
`lab.estimate.gpus.GPUS`. The efficiencies that turn peaks into what PyTorch reaches are in
`lab.estimate.speed` with their sources. T4 has no bf16: its 16-bit figure is fp16.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lab.errors import LabError
from lab.estimate.gpus import get_gpu

T = 1e12
G = 1e9


@dataclass(frozen=True)
class Hardware:
    """Peaks of one device. `overlapped`: a GPU runs kernels while the CPU launches the next ones (an op
    costs the longer of the two); a CPU does both itself (they add up)."""

    name: str
    half_flops: float  # dense bf16/fp16 tensor-core FLOP/s
    fp32_flops: float  # fp32 FLOP/s (no TF32: PyTorch's default for matmuls)
    bandwidth: float  # memory bytes/s
    link: float  # bytes/s one GPU sends to the others (NVLink, else PCIe); 0 = none
    source: str
    overlapped: bool = True
    measured: bool = False  # True: a probe of this machine, not a datasheet (its efficiencies are 1)
    op_seconds: float = 0.0  # measured per-op overhead (probe only)
    # probe only: FLOP/s of each fp32 matmul shape of the step (Work.shape), timed as the step runs it, and
    # 4-bit dequantization in output elements per second (bitsandbytes' CPU kernel, not a memory-bound copy)
    matmul_rates: dict = field(default_factory=dict, hash=False, compare=False)
    dequant_rate: float = 0.0
    # probe only: a CPU pays every dispatched op itself, views included (a GPU hides them under its kernels), and
    # torch.utils.checkpoint's Python saved-tensor hooks per detach they make (lab.estimate.probe)
    view_seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    # probe only: the Python a module's forward runs between its ops, per module call (a tiny sibling of the model)
    module_seconds: float = 0.0


PCIE4 = 25 * G  # PCIe 4.0 x16, about 25 GB/s each way achieved of 32 GB/s
SPECS: tuple[Hardware, ...] = (
    Hardware("T4 16 GB", 65 * T, 8.1 * T, 320 * G, 12 * G,
             "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf"),
    Hardware("RTX 3060 12 GB", 25.6 * T, 12.7 * T, 360 * G, 12 * G,
             "NVIDIA Ampere GA102 whitepaper, appendix (GA106: FP16 tensor with FP32 accumulate, dense)"),
    Hardware("RTX 4090 24 GB", 165.2 * T, 82.6 * T, 1008 * G, PCIE4,
             "NVIDIA Ada Lovelace architecture whitepaper, table 2 (FP16 tensor, FP32 accumulate, dense)"),
    Hardware("L4 24 GB", 121 * T, 30.3 * T, 300 * G, PCIE4,
             "https://www.nvidia.com/en-us/data-center/l4/ (242 TFLOPS bf16 with sparsity)"),
    Hardware("A10G 24 GB", 125 * T, 31.2 * T, 600 * G, PCIE4,
             "NVIDIA A10 datasheet (125 TFLOPS bf16 dense, 600 GB/s), https://www.nvidia.com/en-us/data-center/"
             "products/a10-gpu/; AWS publishes no tensor figure for its A10G variant of the same GA102 chip"),
    Hardware("L40S 48 GB", 362 * T, 91.6 * T, 864 * G, PCIE4,
             "https://www.nvidia.com/en-us/data-center/l40s/ (733 TFLOPS bf16 with sparsity)"),
    Hardware("A100 40 GB", 312 * T, 19.5 * T, 1555 * G, 300 * G,
             "https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"),
    Hardware("A100 80 GB", 312 * T, 19.5 * T, 2039 * G, 300 * G,
             "A100 datasheet (SXM: 2,039 GB/s, NVLink 600 GB/s both ways)"),
    Hardware("H100 80 GB", 989 * T, 67 * T, 3350 * G, 450 * G,
             "https://www.nvidia.com/en-us/data-center/h100/ (SXM: 1,979 TFLOPS bf16 with sparsity, 3.35 TB/s, "
             "NVLink 900 GB/s both ways)"),
)


def get_hardware(name: str) -> Hardware:
    """The peaks of a GPU of `lab.estimate.gpus.GPUS` (same names, same prefix matching)."""
    gpu = get_gpu(name)
    for h in SPECS:
        if h.name == gpu.name:
            return h
    raise LabError(f"No speed figures for {gpu.name!r} yet.", f"Choose one of: {', '.join(h.name for h in SPECS)}.")
