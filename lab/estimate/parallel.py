"""More than one GPU: the per-GPU peak of the simulated step under DDP or FSDP (the lab's launch modes,
`lab.vocab.LAUNCH_MODES`), and the smallest number of GPUs that fits — the answer for a run that has
outgrown one card (`lab.training.distributed.launch_command` prints how to run it).

Each GPU runs the same step on its own batch, so what the step allocates (activations, temporaries)
stays what one GPU simulated; what changes is where the model state lives. The simulation gives each
phase's peak by category (forward, backward, optimizer step: `Simulation.phase_peaks`) and the parameters
as FSDP wraps them (`Simulation.layout`); each phase is redistributed, and the largest is the per-GPU peak.
From PyTorch's source (torch/distributed/fsdp, torch/nn/parallel/distributed.py):

- **DDP** keeps a whole replica and its Reducer allocates flat buckets (25 MB each, `bucket_cap_mb`) that
  together hold a copy of every gradient (`gradient_as_bucket_view=False`, the default).
- **FSDP** (FSDP1 flat parameters, `use_orig_params=False`, as peft's recipe runs it; FSDP2 per-parameter
  DTensor shards) keeps 1/F of the parameters (F = the GPUs sharing them: all of them, or one node's
  with HYBRID_SHARD), of the gradients (reduce-scattered in the backward) and of the optimizer state
  (built on the sharded parameters). What is not a parameter stays whole on every GPU: buffers and
  bitsandbytes' quantization constants (absmax, code: attributes FSDP does not see); the 4-bit weights
  themselves shard because `bnb_4bit_quant_storage` stores them in the compute dtype.
- Around each decoder layer FSDP all-gathers its unsharded parameters, and frees them after (FULL_SHARD,
  HYBRID_SHARD) or only after the backward (SHARD_GRAD_OP: by the end of the forward every layer is
  gathered). Two layers are gathered at once: the one computing and the next one (the backward's
  BACKWARD_PRE prefetch; in the forward, `limit_all_gathers` lets the CPU issue one all-gather ahead).
  The root unit (embeddings, final norm, LM head) is not resharded after the forward (FSDP1
  `_post_forward_reshard`, FSDP2's root too): it stays gathered through the backward.
- In the backward each unit's full gradient exists until it is reduce-scattered (FSDP2 also copies it
  into one reduce-scatter input buffer, and copies the all-gather output out into per-parameter tensors).
- CPU offload (`offload_params`): sharded parameters and gradients live in CPU RAM and the optimizer steps
  there; the GPU holds only what is gathered, the current gradient, activations and the constants.

Padding of flat parameters to a multiple of F is a few elements per unit and is left out; NCCL's own
buffers are part of the CUDA-context allowance of the verdict (`lab.estimate.gpus`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.estimate.gpus import FRAGMENTATION, FSDP_FRAGMENTATION, Gpu, GpuVerdict, gpu_verdict
from lab.vocab import FSDP_STRATEGIES, LAUNCH_MODES, lookup

if TYPE_CHECKING:  # a simulated step is what this module redistributes; importing it at run time would import torch
    from lab.estimate.simulate import Simulation

MAX_GPUS = 512
GATHERED_LAYERS = 2  # the layer computing and the next one's all-gather (BACKWARD_PRE; limit_all_gathers)
# the lab's FSDP launch (lab.training.distributed.FSDP_QLORA_FLAGS, peft's FSDP + QLoRA recipe)
DEFAULT_STRATEGY, DEFAULT_OFFLOAD, DEFAULT_VERSION = "full_shard", True, 1
GPUS_PER_NODE = 8
OFFLOAD_HELP = ("FSDP's offload_params: the sharded parameters, gradients and the optimizer step live in CPU RAM; each "
                "GPU holds only the layers being gathered, the gradients being reduced, activations and the 4-bit "
                "constants. On: as the lab's FSDP launch command runs.")


@dataclass(frozen=True)
class ParallelPeak:
    sharding: str
    gpus: int
    per_gpu_peak_bytes: int
    terms: dict[str, int]  # how the single-GPU peak changes, term by term (negative: saved); they sum to the peak
    phase: str = ""  # where the per-GPU peak is: forward, backward or optimizer step
    strategy: str = ""  # FSDP: full_shard | shard_grad_op | hybrid_shard
    offload: bool = False  # FSDP: parameters, gradients and optimizer step in CPU RAM
    fsdp_version: int = 0

    @property
    def fragmentation(self) -> float:
        """The verdict's allocator allowance for one of these GPUs (lab.estimate.gpus: FSDP strands more)."""
        return FSDP_FRAGMENTATION if self.sharding == "fsdp" and self.gpus > 1 else FRAGMENTATION

    def verdict(self, gpu: Gpu) -> GpuVerdict:
        return gpu_verdict(self.per_gpu_peak_bytes, gpu, self.fragmentation)

    def to_json(self) -> dict:
        return {**asdict(self), "fragmentation": self.fragmentation}


def per_gpu_peak(sim: Simulation, gpus: int, sharding: str, strategy: str = DEFAULT_STRATEGY,
                 offload: bool = DEFAULT_OFFLOAD, fsdp_version: int = DEFAULT_VERSION,
                 gpus_per_node: int = GPUS_PER_NODE) -> ParallelPeak:
    """The predicted max_memory_allocated of each of `gpus` GPUs. FSDP's defaults are the lab's own FSDP
    launch (FULL_SHARD, parameters offloaded to the CPU, FSDP1)."""
    sharding = lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name
    strategy = lookup(FSDP_STRATEGIES, strategy, "FSDP sharding strategy").name
    for label, value in (("number of GPUs", gpus), ("number of GPUs per node", gpus_per_node)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabError(f"The {label} must be a positive integer, got {value!r}.")
    if fsdp_version not in (1, 2):
        raise LabError(f"FSDP version {fsdp_version!r} does not exist.", "Use 1 (flat parameters) or 2 (fully_shard).")
    if sim.kind != "training":
        raise LabError("Multi-GPU figures are for training steps.", "Drop --gpus for --infer.")
    if gpus == 1:  # one process: no sharding, no buckets, no collectives
        return ParallelPeak(sharding, 1, sim.peak_bytes, {"single-GPU peak": sim.peak_bytes})
    if sharding == "ddp":
        terms = {"single-GPU peak": sim.peak_bytes,
                 "gradient buckets (all-reduce copy)": sim.totals.get("gradients", 0)}
        return ParallelPeak(sharding, gpus, sum(terms.values()), terms)
    shards = min(gpus, gpus_per_node) if strategy == "hybrid_shard" else gpus
    best = max(((phase, _fsdp_terms(sim, cats, phase, shards, strategy, offload, fsdp_version))
                for phase, cats in _phases(sim).items()), key=lambda pt: sum(pt[1].values()))
    phase, terms = best
    return ParallelPeak(sharding, gpus, sum(terms.values()), terms, phase, strategy, offload, fsdp_version)


def _phases(sim: Simulation) -> dict[str, dict[str, int]]:
    """Each phase's peak by category; a simulation made before phases were kept: its one peak."""
    return sim.phase_peaks or {"backward": dict(sim.by_category)}


def _fsdp_terms(sim: Simulation, cats: dict[str, int], phase: str, shards: int, strategy: str, offload: bool,
                version: int) -> dict[str, int]:
    """One phase's peak under FSDP, as changes to the single-GPU peak."""
    lay = sim.layout or {"params": sim.totals.get("weights", 0) + sim.totals.get("adapters", 0),
                         "root": 0, "layer": sim.one_layer.get("weights", 0) + sim.one_layer.get("adapters", 0),
                         "layer_trainable": sim.one_layer.get("gradients", 0)}
    here = sum(cats.values())
    params = min(lay["params"], cats.get("weights", 0) + cats.get("adapters", 0))  # the rest: constants, buffers
    grads, opt = cats.get("gradients", 0), cats.get("optimizer", 0)
    keep = 0 if offload else 1 / shards  # the share of the sharded state this GPU holds
    terms = {"single-GPU peak": sim.peak_bytes, f"this phase ({phase}) instead of the single-GPU peak's":
             here - sim.peak_bytes}
    terms["parameters held by the other GPUs" if not offload else "parameters in CPU RAM (offload)"] = \
        -int(params * (1 - keep))
    terms["gradients held by the other GPUs" if not offload else "gradients in CPU RAM (offload)"] = \
        -int(grads * (1 - keep))
    terms["optimizer state held by the other GPUs" if not offload else "optimizer step in CPU RAM (offload)"] = \
        -int(opt * (1 - keep))
    if phase in ("forward", "backward"):
        if strategy == "shard_grad_op":  # nothing resharded after the forward: every layer gathered at its end
            gathered = lay["params"]
        else:
            # FSDP2 also copies one layer's all-gather output out into per-parameter tensors
            gathered = lay["root"] + (GATHERED_LAYERS + (version == 2)) * lay["layer"]
        if offload:  # each unit's shard is first copied to the GPU, then all-gathered
            gathered += int(gathered / shards)
        terms["all-gathered parameters (root unit + layers in flight)"] = gathered
    if phase == "backward":
        terms["one layer's unsharded gradients (until reduce-scattered)"] = \
            lay["layer_trainable"] * (1 + (version == 2))
    return {k: v for k, v in terms.items() if v or k == "single-GPU peak"}


def why_none_fit(sharding: str) -> str:
    """Why no number of GPUs fits (what `smallest_fitting` returning None means for this launch mode)."""
    if lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name == "ddp":
        return "DDP keeps the whole model on every GPU: more GPUs do not lower the per-GPU peak."
    return ("What each GPU's step needs besides the sharded model state (activations, gathered layers) does not "
            "fit, however many GPUs share the state.")


def smallest_fitting(sim: Simulation, gpu: Gpu, sharding: str, **fsdp) -> int | None:
    """The fewest GPUs of this kind whose per-GPU peak fits (same verdict as one GPU); None if none does
    (DDP never shrinks the model state: if one GPU does not fit, no number does). `fsdp`: per_gpu_peak's
    FSDP settings."""
    def fits(n: int) -> bool:
        return per_gpu_peak(sim, n, sharding, **fsdp).verdict(gpu).fits

    if fits(1):
        return 1
    if lookup(LAUNCH_MODES, sharding, "multi-GPU mode").name == "ddp":
        return None
    lo, hi = 1, 2
    while not fits(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_GPUS:
            return None
    while hi - lo > 1:  # the per-GPU peak falls as N grows
        mid = (lo + hi) // 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
    return hi
