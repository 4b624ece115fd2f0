"""One training over several processes: who rank 0 is, what every rank must agree on, and the
launch command for N GPUs (or N CPU processes).

`python -m lab train` runs unchanged under `accelerate launch` or `torchrun`: every process (rank)
trains on its share of each batch and DDP averages the gradients, so N processes with batch size b
train like one process with batch size N*b. Rank 0 alone takes the lock and writes the run folder's
files (events, record, adapter, card); the other ranks stay silent. Two things the ranks must agree
on come from rank 0:

- the run folder: rank 0 names it (from its clock) and creates it, the others receive its path, so
  `--output` is not needed and the run lands in the run history;
- when to stop: a STOP file or a signal seen by any rank stops every rank after the same step (a rank
  that stopped alone would leave the others waiting forever in the next gradient all-reduce).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import broadcast_object_list

from lab.errors import LabError
from lab.training.config import to_cli_args
from lab.vocab import LAUNCH_MODES, OPTIMIZERS, PRECISIONS, lookup

T = TypeVar("T")

# torchrun/accelerate set RANK and WORLD_SIZE; an MPI launch (accelerate's CPU route) sets the others.
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return default


def rank() -> int:
    return _env_int(RANK_VARS, 0)


def world_size() -> int:
    return _env_int(SIZE_VARS, 1)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a multi-process launch."""
    return rank() == 0


def fsdp_enabled() -> bool:
    """True under `accelerate launch` with FSDP (accelerate sets this variable)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


# --------------------------------------------------------------------------- the --cpu trap
def check_launch() -> None:
    """Refuse `accelerate launch --cpu --num_processes N`: accelerate's CPU launcher starts ONE process
    (several CPU processes go through mpirun), so the run would silently train with 1/N of the batch
    the user asked for. Its traces: ACCELERATE_USE_CPU and MASTER_ADDR (set only for N > 1), no ranks."""
    if world_size() > 1 or "MASTER_ADDR" not in os.environ:
        return
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return
    n = requested_processes() or "N"
    raise LabError(
        f"`accelerate launch --cpu --num_processes {n}` started one process, not {n}: accelerate's --cpu launcher "
        "runs several processes only through mpirun.",
        f"For {n} processes on this machine use `accelerate launch --multi_gpu --num_processes {n} "
        f"--main_process_port 0 "
        f"-m lab train ...` (without GPUs each process trains on the CPU; DDP syncs over gloo), or "
        f"`torchrun --standalone --nproc_per_node {n} -m lab train ...`.",
    )


def requested_processes() -> int | None:
    """The --num_processes the launcher (our parent process) was given, when its command line is readable."""
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    for i, arg in enumerate(argv):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
            if arg.startswith(flag + "=") and arg.split("=", 1)[1].isdigit():
                return int(arg.split("=", 1)[1])
    return None


# --------------------------------------------------------------------------- agreeing across ranks
def _process_group(device: str) -> None:
    """Start the process group the Trainer would start (gloo on CPU, NCCL on GPUs) so rank 0 can
    broadcast before the Trainer exists; the Trainer then reuses it."""
    PartialState(cpu=device == "cpu")


def from_main(make: Callable[[], T], device: str) -> T:
    """`make()` run on rank 0 only; every rank gets its result, or raises its LabError (so a busy lock on
    rank 0 ends every rank with the same one-line message, instead of leaving them waiting)."""
    if world_size() == 1:
        return make()

    _process_group(device)
    payload: list = [None]
    if is_main_process():
        try:
            payload[0] = ("ok", make())
        except LabError as e:
            payload[0] = ("error", e.message, e.hint)
        except Exception as e:  # still tell the others, then fail here with the real traceback
            payload[0] = ("error", f"rank 0 failed: {type(e).__name__}: {e}", None)
            broadcast_object_list(payload, from_process=0)
            raise
    broadcast_object_list(payload, from_process=0)
    if payload[0][0] == "error":
        raise LabError(payload[0][1], payload[0][2])
    return payload[0][1]


def any_process(flag: bool, device) -> bool:
    """True on every rank when `flag` is true on at least one (a collective: every rank must call it)."""
    if world_size() == 1 or not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


# --------------------------------------------------------------------------- launch commands
# peft's FSDP + QLoRA recipe (docs/source/accelerate/fsdp.md, examples/sft/configs/fsdp_config_qlora.yaml):
# use_orig_params false (with peft's auto-wrap policy, which transformers applies, frozen and LoRA weights are
# wrapped apart), rank 0 loads and broadcasts the weights, parameters offloaded to CPU RAM.
FSDP_QLORA_FLAGS = {
    "--fsdp_version": "1",
    "--fsdp_sharding_strategy": "FULL_SHARD",
    "--fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "--fsdp_backward_prefetch": "BACKWARD_PRE",
    "--fsdp_state_dict_type": "SHARDED_STATE_DICT",
    "--fsdp_use_orig_params": "false",
    "--fsdp_cpu_ram_efficient_loading": "true",
    "--fsdp_sync_module_states": "true",
    "--fsdp_offload_params": "true",
}


@dataclass
class LaunchCommand:
    argv: list[str]
    notes: list[str] = field(default_factory=list)  # what was changed in the settings, and why

    def __str__(self) -> str:
        return shlex.join(self.argv)


def launch_command(cfg, processes: int, mode: str = "ddp", device: str = "cuda") -> LaunchCommand:
    """The command that runs `cfg` (a TrainConfig) as one training over `processes` processes: one per GPU
    (`device="cuda"`), or CPU processes (`device="cpu"`). `mode` is a LAUNCH_MODES name."""
    mode = lookup(LAUNCH_MODES, mode, "launch mode").name
    if not isinstance(processes, int) or processes < 1:
        raise LabError(
            f"processes={processes!r}: a launch needs at least 1 process.", "Give the number of GPUs to use."
        )
    if mode == "fsdp" and device != "cuda":
        raise LabError("FSDP + QLoRA shards the base across CUDA GPUs; it does not run on a CPU.",
                       "Use the ddp mode for several CPU processes.")
    cfg.validate(device)
    notes = []
    if mode == "fsdp":
        if PRECISIONS[cfg.precision].name == "int8":
            raise LabError("precision=int8 with FSDP: peft lists 8-bit bitsandbytes + FSDP as not working.",
                           "Use nf4 or nf4-dq (QLoRA), or bf16.")
        if OPTIMIZERS[cfg.optimizer].state_bits == 8:
            notes.append(
                f"optimizer {cfg.optimizer} -> adamw_torch: peft reports that 8-bit (paged) AdamW fails to save "
                "FSDP + QLoRA checkpoints."
            )
            cfg = replace(cfg, optimizer="adamw_torch")
        if cfg.merge:
            notes.append("--merge dropped: peft cannot merge under FSDP; merge afterwards with Merge & export.")
            cfg = replace(cfg, merge=False)
    train = ["-m", "lab", "train", *to_cli_args(cfg, exclude=() if cfg.output else ("output",))]
    if processes == 1 and mode == "ddp":
        return LaunchCommand(["python", *train], ["One process: no launcher needed."])
    head = ["accelerate", "launch"]
    if mode == "fsdp":
        head += ["--use_fsdp", "--num_processes", str(processes), "--mixed_precision", "no"]
        head += [x for kv in FSDP_QLORA_FLAGS.items() for x in kv]
        notes.append("Mixed precision comes from the run's own bf16/fp16 setting, as in peft's recipe; "
                     "--fsdp_offload_params true saves GPU memory at the cost of speed.")
    else:
        # accelerate's multi-process launcher (torch.distributed.run) is called --multi_gpu; without GPUs each
        # process trains on the CPU and DDP syncs over gloo. Port 0: pick a free one.
        head += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0"]
        if device == "cpu":
            notes.append("On a CPU, --multi_gpu is still the flag that starts several processes "
                         "(`accelerate launch --cpu` starts one).")
    return LaunchCommand(head + train, notes)
