"""The GPUs people ask about, and the verdict whether a memory figure fits one."""

from __future__ import annotations

from dataclasses import dataclass

from lab.errors import LabError

CUDA_CONTEXT_BYTES = 500 * 10**6  # CUDA context + cuBLAS workspace: 0.3–0.8 GB in practice


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_bytes: int  # what torch.cuda.get_device_properties reports (a bit under the label)
    note: str = ""


MiB = 2**20
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
TIGHT = 0.90  # above this share of memory: fits, but little room for spikes and fragmentation


def get_gpu(name: str) -> Gpu:
    for g in GPUS:
        if g.name.lower() == name.lower() or g.name.lower().startswith(name.lower()):
            return g
    raise LabError(f"Unknown GPU {name!r}.", f"Choose one of: {', '.join(g.name for g in GPUS)}.")


def fit_verdict(total_bytes: int, capacity_bytes: int) -> str:
    if total_bytes <= TIGHT * capacity_bytes:
        return "fits"
    if total_bytes <= capacity_bytes:
        return "tight"
    return "does not fit"


def this_machine(env: dict | None = None) -> Gpu:
    """This machine's GPU, or its RAM when there is no GPU (the CUDA allowance then does not apply).
    `env`: an `environment_report().to_json()` dict, if the caller already has one (pages cache it)."""
    if env is None:
        from lab.environment import environment_report

        env = environment_report().to_json()
    if env["gpus"]:
        g = env["gpus"][0]
        return Gpu(f"this machine: {g['name']}", int(g["total_bytes"]))
    return Gpu("this machine: CPU RAM", int(env["ram_total_bytes"]), "no GPU: RAM holds the model")


def fit_table(total_bytes: int, gpus=GPUS) -> list[dict]:
    return [
        {"gpu": g.name, "memory_bytes": g.memory_bytes, "used_percent": 100.0 * total_bytes / g.memory_bytes,
         "verdict": fit_verdict(total_bytes, g.memory_bytes), "note": g.note}
        for g in gpus
    ]
