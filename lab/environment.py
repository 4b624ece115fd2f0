"""What machine are we on: device, memory, library versions. (Whether the embedded model is ready is
`lab.models.sources.embedded_status`: this module sits below the models.)"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata

import psutil
import torch

# The libraries whose versions matter here: the Home page and `lab info` show them, and every run
# records them in lab_run.json.
LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "trl", "datasets", "streamlit")


def library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def device_type() -> str:
    """'cuda' when a CUDA GPU is usable, else 'cpu'. (MPS is not supported by bitsandbytes.)"""
    return "cuda" if torch.cuda.is_available() else "cpu"


def supports_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(device: str | None = None) -> torch.dtype:
    """The dtype to compute in on this device.

    CPU: float32 (bf16 matmuls are ~20x slower on typical CPUs). GPU: bf16 where supported
    (Ampere and newer), fp16 otherwise (e.g. a T4).
    """
    device = device or device_type()
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if supports_bf16() else torch.float16


@dataclass
class GpuInfo:
    name: str
    total_bytes: int
    free_bytes: int
    capability: str


@dataclass
class EnvironmentReport:
    device: str
    device_name: str
    compute_dtype: str
    ram_total_bytes: int
    ram_available_bytes: int
    cpu_count: int
    python: str
    versions: dict[str, str | None]
    gpus: list[GpuInfo] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        # Flat keys for scripts: `info --json | jq .torch`.
        for lib in ("torch", "transformers", "peft", "bitsandbytes"):
            data[lib] = self.versions.get(lib)
        return data


def gpu_info() -> list[GpuInfo]:
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append(GpuInfo(props.name, total, free, f"{props.major}.{props.minor}"))
    return gpus


def environment_report() -> EnvironmentReport:
    vm = psutil.virtual_memory()
    device = device_type()
    gpus = gpu_info()
    cpu_name = platform.processor() or platform.machine()
    return EnvironmentReport(
        device=device,
        device_name=gpus[0].name if gpus else f"CPU ({cpu_name}, {psutil.cpu_count()} cores)",
        compute_dtype=str(compute_dtype(device)).removeprefix("torch."),
        ram_total_bytes=vm.total,
        ram_available_bytes=vm.available,
        cpu_count=psutil.cpu_count() or 1,
        python=platform.python_version(),
        versions={lib: library_version(lib) for lib in LIBRARIES},
        gpus=gpus,
    )
