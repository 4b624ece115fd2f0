"""Hourly prices of the GPUs in `lab.estimate.gpus.GPUS`: Hugging Face Spaces hardware and common clouds.

To update: edit PRICES (one row per offer, USD per GPU-hour, on demand) and PRICES_DATE. Prices move; every row
names where it was read. A multi-GPU offer is priced per GPU (its hourly price / its GPUs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

PRICES_DATE = "2026-11"  # when the rows below were read (the sources' own dates are in their rows)
HF_SPACES = "https://huggingface.co/docs/hub/spaces-gpus"
HF_JOBS = "https://huggingface.co/docs/hub/jobs-pricing"
RUNPOD = "https://www.runpod.io/pricing (read 2026-11-09, as transcribed by github.com/datareceipts/data-receipts, " \
         "109-gpu-pricing/vendors.json)"
AWS = "AWS on-demand us-east-1, per GPU of the 8-GPU instance (datareceipts 109-gpu-pricing/hyperscalers.json, " \
      "retrieved 2026-11-09)"


@dataclass(frozen=True)
class Price:
    gpu: str  # a name of lab.estimate.gpus.GPUS
    offer: str  # who sells it, and the offer's name
    usd_per_hour: float  # per GPU
    source: str

    def to_json(self) -> dict:
        return asdict(self)


PRICES: tuple[Price, ...] = (
    Price("T4 16 GB", "HF Spaces 'Nvidia T4 - small'", 0.40, HF_SPACES),
    Price("T4 16 GB", "HF Spaces 'Nvidia T4 - medium'", 0.60, HF_SPACES),
    Price("L4 24 GB", "HF Spaces '1x Nvidia L4'", 0.80, HF_SPACES),
    Price("L4 24 GB", "HF Spaces '4x Nvidia L4' (per GPU)", 3.80 / 4, HF_SPACES),
    Price("L40S 48 GB", "HF Spaces '1x Nvidia L40S'", 1.80, HF_SPACES),
    Price("L40S 48 GB", "HF Spaces '4x Nvidia L40S' (per GPU)", 8.30 / 4, HF_SPACES),
    Price("A10G 24 GB", "HF Spaces 'Nvidia A10G - small'", 1.00, HF_SPACES),
    Price("A10G 24 GB", "HF Spaces 'Nvidia A10G - large'", 1.50, HF_SPACES),
    Price("A100 80 GB", "HF Spaces 'Nvidia A100 - large'", 2.50, HF_SPACES),
    Price("A100 80 GB", "RunPod Secure Cloud A100 SXM", 1.79, RUNPOD),
    Price("A100 80 GB", "AWS p4de.24xlarge (per GPU)", 27.44705 / 8, AWS),
    Price("A100 40 GB", "AWS p4d.24xlarge (per GPU)", 21.957642 / 8, AWS),
    Price("H100 80 GB", "RunPod Secure Cloud H100 SXM", 3.99, RUNPOD),
    Price("H100 80 GB", "AWS p5.48xlarge (per GPU)", 55.04 / 8, AWS),
)


def prices_for(gpu: str) -> list[Price]:
    return [p for p in PRICES if p.gpu == gpu]


def run_costs(gpu: str, run_seconds: float, gpus: int = 1) -> list[dict]:
    """The cost of a run of `run_seconds` on `gpus` GPUs of `gpu` at each listed price."""
    hours = run_seconds / 3600 * gpus
    return [{**p.to_json(), "gpu_hours": hours, "usd": hours * p.usd_per_hour} for p in prices_for(gpu)]
