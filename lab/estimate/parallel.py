"""More than one GPU: the per-GPU peak of the simulated step under DDP or FSDP full-shard (the lab's launch
modes, `lab.vocab.LAUNCH_MODES`), and the smallest number of GPUs that fits — the answer for a run that has
outgrown one card (`lab.training.distributed.launch_command` prints how to run it).

Each GPU runs the same step on its own batch, so what the step allocates (activations, temporaries)
stays what one GPU simulated; what changes is the model state:

- DDP keeps everything whole and adds one bucket copy of the gradients for the all-reduce (torch's
  DistributedDataParallel, gradient_as_bucket_view=False by default: "the saved memory size will be
  equal to the total gradients size" when it is True).
- FSDP full-shard keeps 1/N of the parameters, gradients and optimizer state; around each layer's
  forward and backward it gathers that layer's full parameters (two layers at once in the backward:
  the current one and the one prefetched, FSDP's default BACKWARD_PRE), and the layer's full gradients
  exist until they are reduce-scattered.

This is arithmetic on the simulated categories, not a simulation of the collectives: NCCL's own
buffers are part of the CUDA-context allowance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from lab.errors import LabError
from lab.estimate.gpus import Gpu, gpu_verdict
from lab.estimate.simulate import Simulation
from lab.vocab import LAUNCH_MODES, lookup

MAX_GPUS = 512
PREFETCHED_LAYERS = 2  # FSDP BACKWARD_PRE: the layer being computed and the next one's all-gather


@dataclass(frozen=True)
class ParallelPeak:
    sharding: str
    gpus: int
    per_gpu_peak_bytes: int
    terms: dict[str, int]  # how the single-GPU peak changes, term by term (negative: saved)

    def to_json(self) -> dict:
        return asdict(self)


def per_gpu_peak(sim: Simulation, gpus: int, sharding: str) -> ParallelPeak:
    """The predicted max_memory_allocated of each of `gpus` GPUs."""
    sharding = lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise LabError(f"The number of GPUs must be a positive integer, got {gpus!r}.")
    if sim.kind != "training":
        raise LabError("Multi-GPU figures are for training steps.", "Drop --gpus for --infer.")
    cats = sim.by_category
    trainable = sim.totals.get("adapters", 0) or sim.totals.get("gradients", 0)
    terms: dict[str, int] = {"single-GPU peak": sim.peak_bytes}
    if sharding == "ddp":
        terms["gradient buckets (all-reduce copy)"] = trainable if gpus > 1 else 0
    else:
        sharded = sum(cats.get(k, 0) for k in ("weights", "adapters", "gradients", "optimizer"))
        terms["model state held by the other GPUs"] = -int(sharded * (gpus - 1) / gpus)
        layer = sim.one_layer.get("weights", 0) + sim.one_layer.get("adapters", 0)
        terms["all-gathered layers"] = PREFETCHED_LAYERS * layer if gpus > 1 else 0
        terms["one layer's unsharded gradients"] = sim.one_layer.get("gradients", 0) if gpus > 1 else 0
    return ParallelPeak(sharding, gpus, sum(terms.values()), terms)


def why_none_fit(sharding: str) -> str:
    """Why no number of GPUs fits (what `smallest_fitting` returning None means for this launch mode)."""
    if lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name == "ddp":
        return "DDP keeps the whole model on every GPU: more GPUs do not lower the per-GPU peak."
    return ("What each GPU's step needs besides the sharded model state (activations, gathered layers) does not "
            "fit, however many GPUs share the state.")


def smallest_fitting(sim: Simulation, gpu: Gpu, sharding: str) -> int | None:
    """The fewest GPUs of this kind whose per-GPU peak fits (same verdict as one GPU); None if none does
    (DDP never shrinks the model state: if one GPU does not fit, no number does)."""
    if gpu_verdict(per_gpu_peak(sim, 1, sharding).per_gpu_peak_bytes, gpu).fits:
        return 1
    if lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name == "ddp":
        return None
    lo, hi = 1, 2
    while not gpu_verdict(per_gpu_peak(sim, hi, sharding).per_gpu_peak_bytes, gpu).fits:
        lo, hi = hi, hi * 2
        if hi > MAX_GPUS:
            return None
    while hi - lo > 1:  # the per-GPU peak falls as N grows
        mid = (lo + hi) // 2
        if gpu_verdict(per_gpu_peak(sim, mid, sharding).per_gpu_peak_bytes, gpu).fits:
            hi = mid
        else:
            lo = mid
    return hi
