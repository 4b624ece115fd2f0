"""The GPUs people ask about, and the one verdict whether a memory figure fits one.

A step fits a GPU when its peak (`torch.cuda.max_memory_allocated`, what the simulation predicts)
plus two allowances stays within the memory the device reports:

- **CUDA context**: memory the process holds outside PyTorch's allocator (the CUDA context, kernels,
  cuBLAS/NCCL workspaces);
- **allocator fragmentation**: memory PyTorch's caching allocator has reserved but cannot hand out
  (free blocks too small or in the wrong place), a share of the peak.

Neither is guessed. Both are read from published out-of-memory reports of LLM fine-tuning runs, whose
PyTorch message states the GPU's total memory, what PyTorch had allocated and reserved, and what was
free at the moment of the failure (`OOM_REPORTS`): memory outside PyTorch = total − reserved − free,
fragmentation = (reserved − allocated) / allocated. The allowances are the medians of those reports:
the typical overhead, not the worst one (one report, LLaVA with variable-length batches, had 12% of
its allocation stranded in fragments; most had 1–4%). docs/published-memory.md lists them all.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from lab.errors import LabError
from lab.units import fmt_bytes

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class OomReport:
    """One published CUDA out-of-memory message: where, what ran, and the figures it printed."""

    source: str  # "owner/repo#issue"
    run: str
    total_gib: float  # "GiB total capacity"
    allocated_gib: float  # "GiB already allocated"
    reserved_gib: float  # "GiB reserved in total by PyTorch"
    free_gib: float  # "free"

    @property
    def url(self) -> str:
        repo, number = self.source.split("#")
        return f"https://github.com/{repo}/issues/{number}"

    @property
    def outside_pytorch_bytes(self) -> int:
        return int((self.total_gib - self.reserved_gib - self.free_gib) * GiB)

    @property
    def fragmentation(self) -> float:
        return (self.reserved_gib - self.allocated_gib) / self.allocated_gib


OOM_REPORTS: tuple[OomReport, ...] = (
    OomReport("ludwig-ai/ludwig#3583", "Llama-2-7B 4-bit LoRA, Colab T4", 14.75, 13.37, 13.79, 80.81 / 1024),
    OomReport("yangjianxin1/Firefly#33", "Baichuan-7B QLoRA, V100 32 GB", 31.75, 30.35, 30.55, 209.75 / 1024),
    OomReport("lm-sys/FastChat#2701", "Vicuna-13B QLoRA, A100 80 GB", 79.10, 76.13, 77.47, 290.12 / 1024),
    OomReport("stochasticai/xTuring#140", "LLaMA-7B int8 LoRA, RTX 2080 Ti 11 GB", 10.75, 9.40, 9.76, 58.62 / 1024),
    OomReport("haotian-liu/LLaVA#1152", "LLaVA LoRA (Vicuna base), V100 32 GB", 31.75, 27.12, 30.44, 99.50 / 1024),
)
CUDA_CONTEXT_BYTES = int(statistics.median(r.outside_pytorch_bytes for r in OOM_REPORTS))
FRAGMENTATION = statistics.median(r.fragmentation for r in OOM_REPORTS)
CUDA_CONTEXT_SOURCE = next(r for r in OOM_REPORTS if r.outside_pytorch_bytes == CUDA_CONTEXT_BYTES)
FRAGMENTATION_SOURCE = next(r for r in OOM_REPORTS if r.fragmentation == FRAGMENTATION)


@dataclass(frozen=True)
class ReserveReport:
    """A published pair of what PyTorch had allocated and reserved in an FSDP training run."""

    source: str
    url: str
    run: str
    allocated_gib: float
    reserved_gib: float

    @property
    def fragmentation(self) -> float:
        return (self.reserved_gib - self.allocated_gib) / self.allocated_gib


# Under FSDP the caching allocator strands far more than in one process: the all-gathers and reduce-scatters
# allocate on their own CUDA streams, whose freed blocks the compute stream cannot reuse until the streams meet,
# and FSDP's wrapping leaves reserved blocks behind (pytorch/pytorch#124260). Its allowance is the median of
# these published FSDP figures, not the single-process one.
FSDP_RESERVE_REPORTS: tuple[ReserveReport, ...] = (
    ReserveReport("huggingface/trl#3436", "https://github.com/huggingface/trl/issues/3436",
                  "7B LoRA, FSDP on 8 × RTX 3080 10 GB: its out-of-memory message", 6.61, 6.61 + 2.57),
    ReserveReport("AnswerDotAI/fsdp_qlora benchmarks_03_2024.md",
                  "https://github.com/AnswerDotAI/fsdp_qlora/blob/main/benchmarks_03_2024.md",
                  "Llama-2-7B LoRA, FSDP on 2 × RTX 3090, batch 1 × 512: peak allocated / peak reserved", 8.28, 10.24),
    ReserveReport("AnswerDotAI/fsdp_qlora benchmarks_03_2024.md",
                  "https://github.com/AnswerDotAI/fsdp_qlora/blob/main/benchmarks_03_2024.md",
                  "the same, batch 1 × 2048", 9.16, 10.22),
)
FSDP_FRAGMENTATION = statistics.median(r.fragmentation for r in FSDP_RESERVE_REPORTS)


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # what torch.cuda.get_device_properties reports (a bit under the label)
    note: str = ""
    cuda: bool = True  # False: this machine's RAM (no CUDA context, no caching allocator)


GPUS: tuple[Gpu, ...] = (
    Gpu("T4 16 GB", 15_360 * MiB, "Colab free tier, HF Spaces 'T4 small/medium'"),
    Gpu("RTX 3060 12 GB", 12_288 * MiB),
    Gpu("RTX 4090 24 GB", 24_564 * MiB),
    Gpu("L4 24 GB", 23_034 * MiB, "HF Spaces 'L4'"),
    Gpu("A10G 24 GB", 23_028 * MiB, "HF Spaces 'A10G small/large'"),
    Gpu("L40S 48 GB", 46_068 * MiB, "HF Spaces 'L40S'"),
    Gpu("A100 40 GB", 40_960 * MiB),
    Gpu("A100 80 GB", 81_920 * MiB, "HF Spaces 'A100 large'"),
    Gpu("H100 80 GB", 81_559 * MiB, "HF Spaces 'H100'"),
)
UNITS_NOTE = ("GPU names carry the vendor's label (GB); the memory column is what torch reports, in the lab's "
              "GB = 10⁹ bytes (a 'T4 16 GB' reports 15,360 MiB = 16.1 GB).")


def get_gpu(name: str) -> Gpu:
    for g in GPUS:
        if g.name.lower() == name.lower() or g.name.lower().startswith(name.lower()):
            return g
    raise LabError(f"Unknown GPU {name!r}.", f"Choose one of: {', '.join(g.name for g in GPUS)}.")


@dataclass(frozen=True)
class GpuVerdict:
    """Does a step with this peak fit this GPU? Every allowance shown, with where it comes from."""

    gpu: str
    capacity_bytes: int
    peak_bytes: int  # the step's max_memory_allocated
    context_bytes: int  # memory outside PyTorch's allocator
    fragmentation_bytes: int  # reserved but unusable, a share of the peak
    note: str = ""

    @property
    def needed_bytes(self) -> int:
        return self.peak_bytes + self.context_bytes + self.fragmentation_bytes

    @property
    def margin_bytes(self) -> int:
        """Room left (negative: how much is missing)."""
        return self.capacity_bytes - self.needed_bytes

    @property
    def fits(self) -> bool:
        return self.margin_bytes >= 0

    @property
    def verdict(self) -> str:
        return "fits" if self.fits else "does not fit"

    @property
    def summary(self) -> str:
        """'fits (2.10 GB left)' or 'does not fit (1.30 GB missing)': one cell of a fit table."""
        room = fmt_bytes(abs(self.margin_bytes))
        return f"fits ({room} left)" if self.fits else f"does not fit ({room} missing)"

    @property
    def used_percent(self) -> float:
        return 100.0 * self.needed_bytes / self.capacity_bytes

    def to_json(self) -> dict:
        return {"gpu": self.gpu, "memory_bytes": self.capacity_bytes, "peak_bytes": self.peak_bytes,
                "context_bytes": self.context_bytes, "fragmentation_bytes": self.fragmentation_bytes,
                "needed_bytes": self.needed_bytes, "margin_bytes": self.margin_bytes, "fits": self.fits,
                "verdict": self.verdict, "used_percent": self.used_percent, "note": self.note}


def gpu_verdict(peak_bytes: int, gpu: Gpu, fragmentation: float = FRAGMENTATION) -> GpuVerdict:
    """The verdict for one GPU (used by the CLI, the fit table, the inverse and the multi-GPU answer).
    `fragmentation`: the allocator's allowance (FSDP_FRAGMENTATION for a GPU of an FSDP run)."""
    if not gpu.cuda:  # RAM: no CUDA context, no caching allocator
        return GpuVerdict(gpu.name, gpu.memory_bytes, peak_bytes, 0, 0, gpu.note)
    return GpuVerdict(gpu.name, gpu.memory_bytes, peak_bytes, CUDA_CONTEXT_BYTES,
                      int(fragmentation * peak_bytes), gpu.note)


def budget_for_peak(gpu: Gpu) -> int:
    """The largest peak that still fits `gpu` (the inverse of `gpu_verdict`)."""
    if not gpu.cuda:
        return gpu.memory_bytes
    return int((gpu.memory_bytes - CUDA_CONTEXT_BYTES) / (1 + FRAGMENTATION))


def verdicts(peak_bytes: int, gpus=GPUS, fragmentation: float = FRAGMENTATION) -> list[GpuVerdict]:
    """The verdict on each GPU, in order (the calculator's fit table, the CLI's)."""
    return [gpu_verdict(peak_bytes, g, fragmentation) for g in gpus]


def fit_table(peak_bytes: int, gpus=GPUS, fragmentation: float = FRAGMENTATION) -> list[dict]:
    return [v.to_json() for v in verdicts(peak_bytes, gpus, fragmentation)]


def smallest_gpu(peak_bytes: int, gpus=GPUS) -> GpuVerdict | None:
    """The verdict on the smallest listed GPU this peak fits (None: not even the largest)."""
    fitting = [v for v in verdicts(peak_bytes, gpus) if v.fits]
    return min(fitting, key=lambda v: v.capacity_bytes) if fitting else None


def this_machine(env: dict | None = None) -> Gpu:
    """This machine's GPU, or its RAM when there is no GPU (then no CUDA allowances apply).
    `env`: an `environment_report().to_json()` dict, if the caller already has one (pages cache it)."""
    if env is None:
        from lab.environment import environment_report  # why: it imports torch; the GPU table alone needs none

        env = environment_report().to_json()
    if env["gpus"]:
        g = env["gpus"][0]
        return Gpu(f"this machine: {g['name']}", int(g["total_bytes"]))
    return Gpu("this machine: CPU RAM", int(env["ram_total_bytes"]), "no GPU: RAM holds the model", cuda=False)
