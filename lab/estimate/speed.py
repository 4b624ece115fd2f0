"""Time by simulation: the simulated step's ops (`lab.estimate.work`) through a roofline per device.

Each op of the full-depth step takes the longer of its compute (FLOPs over the device's peak times an
efficiency) and its memory traffic (bytes over the bandwidth times an efficiency). On a GPU an op also
takes at least the time PyTorch needs to launch it (the CPU queues kernels while the GPU runs earlier
ones, so the longer one wins); on a CPU the launch overhead adds up. 4-bit dequantization, checkpointing's
recomputation, the optimizer's updates and eager attention's score matrix are ops of the step like any
other, so their time is counted the same way. Several GPUs add their collectives (`comm_seconds`).
On this CPU (`lab.estimate.probe`) a matmul probed at its own shape and a 4-bit dequantization take their
measured rates instead of the roofline: a CPU's GEMM speed depends on the shape, and bitsandbytes' CPU
dequantization is a kernel of its own, not a copy.

Efficiencies (what PyTorch reaches of a datasheet peak), with where they come from:
- MATMUL_EFFICIENCY 0.7: cuBLAS bf16 GEMMs of LLM shapes reach 60-80% of the dense peak (NVIDIA's
  "Matrix Multiplication Background" guide: large GEMMs approach peak; MLPerf Training/LLM MFU reports
  and torchtitan's Llama-3-8B H100 runs at ~40% model FLOP utilisation *end to end*, which includes
  attention, elementwise ops and communication that are modelled separately here).
- ATTENTION_EFFICIENCY 0.5: FlashAttention-2 reaches 50-73% of A100 peak in the forward and less in the
  backward (Dao 2023, arXiv:2307.08691, figures 4-6).
- MEMORY_EFFICIENCY 0.8: elementwise kernels reach ~80-90% of HBM bandwidth (STREAM-like copies on
  A100/H100; NVIDIA's "GPU Performance Background" guide).
- LAUNCH_SECONDS 6e-6: PyTorch eager's per-op overhead, a few microseconds per op (Horace He, "Making Deep
  Learning Go Brrrr From First Principles", 2022: overhead-bound below ~10 µs per op).
- LINK_EFFICIENCY 0.7: NCCL all-reduce bus bandwidth ~70% of the link's (nccl-tests on NVLink/PCIe).
The values were set before checking against docs/published-speed.md; benchmarks/published_speed.py says
which rows were used to check them and which were held out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lab.errors import LabError
from lab.estimate.hardware import Hardware, get_hardware
from lab.estimate.work import Work

MATMUL_EFFICIENCY = 0.7
ATTENTION_EFFICIENCY = 0.5
MEMORY_EFFICIENCY = 0.8
LAUNCH_SECONDS = 6e-6
LINK_EFFICIENCY = 0.7
DDP_OVERLAP = 1.0  # DDP all-reduces gradient buckets while the backward runs: only the part longer than it shows


@dataclass(frozen=True)
class StepTime:
    """Predicted seconds of one step (per GPU), by phase and by what bounds them."""

    device: str
    step_seconds: float
    tokens_per_step: int
    by_phase: dict[str, float]  # forward, recompute, backward, optimizer, communication
    by_bound: dict[str, float]  # compute, memory, launch: which limit decided each op's time
    flops: float
    bytes: float
    ops: float
    gpus: int = 1
    sharding: str = "single"
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tokens_per_second(self) -> float:
        """Per GPU."""
        return self.tokens_per_step / self.step_seconds if self.step_seconds else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["tokens_per_second"] = self.tokens_per_second
        return d


# Work kinds that launch no kernel, each with the probed Hardware field a CPU pays per event
HOST_ONLY = {"view": "view_seconds", "checkpoint": "checkpoint_seconds", "module": "module_seconds"}


def op_seconds(w: Work, hw: Hardware) -> tuple[float, str]:
    """Seconds of one op of `w` on `hw` and what bounds it (compute | memory | launch)."""
    if w.kind in HOST_ONLY:  # nothing moved: what the CPU spends on it, probed; a GPU hides it
        return (getattr(hw, HOST_ONLY[w.kind]) if hw.measured else 0.0), "launch"
    eff_mm, eff_at, eff_mem = (1.0, 1.0, 1.0) if hw.measured else \
        (MATMUL_EFFICIENCY, ATTENTION_EFFICIENCY, MEMORY_EFFICIENCY)
    peak = hw.half_flops if w.half else hw.fp32_flops
    compute = w.flops / (peak * (eff_at if w.kind == "attention" else eff_mm)) if w.flops else 0.0
    memory = w.bytes / (hw.bandwidth * eff_mem)
    if w.shape in hw.matmul_rates and w.kind == "matmul":  # probed at this very shape: its weights' reads included
        compute, memory = w.flops / hw.matmul_rates[w.shape], 0.0
    elif w.kind == "dequant" and hw.dequant_rate and w.shape:
        compute, memory = w.shape[0] / hw.dequant_rate, 0.0
    launch = hw.op_seconds if hw.measured else LAUNCH_SECONDS
    if hw.overlapped:
        t = max(compute, memory, launch)
        return t, ("compute" if t == compute else "memory" if t == memory else "launch")
    bound = "compute" if compute >= memory else "memory"
    return max(compute, memory) + launch, bound


def step_time(sim, hw: Hardware | str, gpus: int = 1, sharding: str = "ddp") -> StepTime:
    """The predicted time of the simulated training step `sim` on `hw` (each of `gpus` GPUs)."""
    if isinstance(hw, str):
        hw = get_hardware(hw)
    if not sim.work:
        raise LabError("This simulation carries no op counts (made before the time model).", "Simulate again.")
    by_phase: dict[str, float] = {}
    by_bound = {"compute": 0.0, "memory": 0.0, "launch": 0.0}
    flops = moved = ops = 0.0
    for w in sim.work:
        t, bound = op_seconds(w, hw)
        by_phase[w.phase] = by_phase.get(w.phase, 0.0) + t * w.count
        by_bound[bound] += t * w.count
        flops += w.flops * w.count
        moved += w.bytes * w.count
        ops += w.count if w.kind not in HOST_ONLY else 0  # kernels launched
    notes = []
    comm = comm_seconds(sim, hw, gpus, sharding) if gpus > 1 else 0.0
    total = sum(by_phase.values())
    if comm:
        if sharding == "fsdp":  # gathers prefetched while the previous layer computes
            exposed = max(0.0, comm - total)
        else:
            backward = by_phase.get("backward", 0.0) + by_phase.get("recompute", 0.0)
            exposed = max(0.0, comm - DDP_OVERLAP * backward)
        by_phase["communication"] = exposed
        notes.append(f"collectives {comm:.3g} s per step, {exposed:.3g} s not hidden behind compute")
        total += exposed
    tokens = _tokens(sim)
    return StepTime(hw.name, total, tokens, by_phase, by_bound, flops, moved, ops, gpus,
                    sharding if gpus > 1 else "single", tuple(notes))


def _tokens(sim) -> int:
    s = sim.settings
    if sim.kind == "training":
        return int(s["batch_size"]) * int(s["max_length"])
    return int(s["batch_size"]) * int(s["prompt_tokens"])


def comm_seconds(sim, hw: Hardware, gpus: int, sharding: str) -> float:
    """Seconds of one step's collectives on a ring of `gpus`: DDP all-reduces the gradients (2(N-1)/N of
    their bytes through each link); FSDP all-gathers the parameters for the forward and again for the
    backward and reduce-scatters the gradients ((N-1)/N each)."""
    if not hw.link:
        raise LabError(f"{hw.name} has no interconnect figure.", "Use one GPU.")
    share = (gpus - 1) / gpus
    grads = sim.totals.get("gradients", 0)
    if sharding == "fsdp":
        params = sim.totals.get("weights", 0) + sim.totals.get("adapters", 0)
        moved = share * (2 * params + grads)
    else:
        moved = 2 * share * grads
    return moved / (hw.link * LINK_EFFICIENCY)


@dataclass(frozen=True)
class GenerationTime:
    """Predicted generation: one prefill of the prompts, then one decode step per new token (each timed at
    the cache's final length, so slightly pessimistic for long generations)."""

    device: str
    prefill_seconds: float
    decode_step_seconds: float
    new_tokens: int
    batch_size: int

    @property
    def seconds(self) -> float:
        return self.prefill_seconds + self.new_tokens * self.decode_step_seconds

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second (all prompts together)."""
        return self.batch_size * self.new_tokens / self.seconds

    def to_json(self) -> dict:
        return {**asdict(self), "seconds": self.seconds, "tokens_per_second": self.tokens_per_second}


def generation_time(sim, hw: Hardware | str) -> GenerationTime:
    """The predicted time of generating as the inference simulation `sim` describes it."""
    if isinstance(hw, str):
        hw = get_hardware(hw)
    seconds = {"prefill": 0.0, "decode": 0.0}
    for w in sim.work:
        seconds[w.phase] = seconds.get(w.phase, 0.0) + op_seconds(w, hw)[0] * w.count
    s = sim.settings
    return GenerationTime(hw.name, seconds["prefill"], seconds["decode"], int(s["new_tokens"]), int(s["batch_size"]))
