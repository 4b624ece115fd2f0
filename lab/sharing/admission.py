"""Admission: will this request fit in the memory that is free right now? Asked with the lab's own
predictions (the calculator's weights and training estimates, the KV-cache formula), before
anything is allocated, so a busy room gets a clear "no, but this would fit" instead of an
out-of-memory that takes the server down for everyone.

A `Need` is a prediction for one request: its bytes, and how to find smaller variants that would
fit a budget (a lower precision for a load; fewer new tokens for a generation; a shorter sequence,
batch 1 or a 4-bit base for a training run). `check` holds it, times a headroom factor, against the
device's free memory — GPU: `torch.cuda.mem_get_info`; CPU: available RAM (psutil) — and raises
`NotAdmitted` saying how much is missing and what would fit.

The formulas for generation are deliberately simple and a little generous (see `forward_bytes`):
admission must refuse what cannot fit, not model the last megabyte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from lab.errors import LabError
from lab.inspect.load_report import load_peak_bytes, predict
from lab.models.precision import get_precision
from lab.models.sources import ModelSource
from lab.units import fmt_bytes
from lab.vocab import COMPUTE, PRECISIONS


@dataclass(frozen=True)
class Need:
    """A request's predicted memory on a device, and smaller variants that would fit a budget."""

    what: str  # "Loading SmolLM2-135M-Instruct at fp32": starts the refusal message
    bytes: int
    device: str
    # budget in bytes -> short descriptions of variants that fit it ("nf4 (about 0.11 GB)")
    smaller: Callable[[int], list[str]] | None = None

    def fits_in(self, budget: int) -> list[str]:
        return self.smaller(budget) if self.smaller is not None else []


class NotAdmitted(LabError):
    """The request does not fit the free memory; says how much is missing and what would fit."""

    def __init__(self, need: Need, available: int, headroom: float, freeable: int = 0) -> None:
        where = "GPU memory" if need.device == "cuda" else "RAM"
        wanted = int(need.bytes * headroom)
        self.missing_bytes = max(wanted - available, 0)
        self.fits = need.fits_in(int(available / headroom))
        message = (f"{need.what} needs about {fmt_bytes(need.bytes)} (+{headroom - 1:.0%} headroom) but only "
                   f"{fmt_bytes(available)} of {where} is free: {fmt_bytes(self.missing_bytes)} missing.")
        if self.fits:
            hint = "What would fit now: " + "; ".join(self.fits) + "."
        else:
            hint = "Nothing smaller fits right now either: wait until the room is quieter, or use a smaller model."
        if freeable:
            hint += f" Models nobody is using hold {fmt_bytes(freeable)}: freeing them may make room."
        super().__init__(message, hint)


def check(need: Need, available: int, headroom: float = 1.2, freeable: int = 0) -> None:
    """Raise NotAdmitted unless `need` (× headroom) fits in `available` bytes."""
    if need.bytes * headroom > available:
        raise NotAdmitted(need, available, headroom, freeable)


# --------------------------------------------------------------------------- loading a model
def load_need(source: ModelSource, precision: str, dtype: str = COMPUTE, device: str = "cpu") -> Need | None:
    """The peak of loading `source` at `precision` (lab.inspect.load_report's prediction: on CPU a
    4-bit/int8 load also holds the float copy it quantizes from). None when the architecture
    cannot be read (the load then goes ahead unpredicted, as the loading lab does)."""
    p = get_precision(precision)

    def peak(name: str) -> int | None:
        try:
            return load_peak_bytes(source, name, predict(source, name, dtype, device), dtype, device)
        except LabError:
            raise
        except Exception:  # an architecture the calculator cannot read
            return None

    needed = peak(p.name)
    if needed is None:
        return None

    def smaller(budget: int) -> list[str]:
        out = []
        for name in PRECISIONS:
            if name != p.name and (b := peak(name)) is not None and b <= budget and b < needed:
                out.append(f"{name} (about {fmt_bytes(b)})")
        return out

    return Need(f"Loading {source.display_name} at {p.label}", needed, device, smaller)


# --------------------------------------------------------------------------- generating
def forward_bytes(arch, batch: int, tokens: int, act_bytes: int, full_logits: bool = False) -> int:
    """Working memory of one forward pass over `batch` × `tokens`, beyond the weights: one layer's
    temporaries (residual, norm, q/k/v/o: ~4·h; MLP gate/up: 2·i per token), the attention scores
    of one layer (batch × heads × tokens², as the math attention kernel materializes them), and fp32
    logits for the last position (generate) or every position (scoring an answer)."""
    h, i = arch.hidden_size, arch.intermediate_size or 4 * arch.hidden_size
    layer = batch * tokens * (4 * h + 2 * i) * act_bytes
    scores = batch * arch.num_attention_heads * tokens * tokens * act_bytes
    logits = batch * (tokens if full_logits else 1) * arch.vocab_size * 4
    return layer + scores + logits


def generation_bytes(arch, batch: int, prompt_tokens: int, new_tokens: int, act_bytes: int,
                     full_logits: bool = False) -> int:
    """KV cache for the whole sequence (2 × layers × kv_heads × head_dim per token and row) plus the
    prefill's working memory."""
    tokens = prompt_tokens + new_tokens
    kv = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim * tokens * batch * act_bytes
    return kv + forward_bytes(arch, batch, tokens, act_bytes, full_logits)


def generation_need(arch, model_name: str, device: str, act_bytes: int, columns: int, prompt_tokens: int,
                    new_tokens: int, adapter_bytes: int = 0, full_logits: bool = False) -> Need:
    """A side-by-side generation (one batched generate of `columns` rows) on a loaded model;
    `adapter_bytes` counts adapters it will load first. Smaller variants: fewer new tokens."""
    needed = generation_bytes(arch, columns, prompt_tokens, new_tokens, act_bytes, full_logits) + adapter_bytes

    def smaller(budget: int) -> list[str]:
        def fits(n: int) -> bool:
            return generation_bytes(arch, columns, prompt_tokens, n, act_bytes, full_logits) + adapter_bytes <= budget

        if not fits(1):
            return [f"fewer columns (one column with one new token needs about "
                    f"{fmt_bytes(generation_bytes(arch, 1, prompt_tokens, 1, act_bytes, full_logits))})"] \
                if columns > 1 else []
        lo, hi = 1, new_tokens  # largest n that fits: memory grows with n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return [f"max new tokens {lo} or fewer"] + ([f"fewer adapters ({columns - 1} now)"] if columns > 1 else [])

    what = f"Generating {new_tokens} tokens × {columns} column{'s' if columns != 1 else ''} on {model_name}"
    return Need(what, needed, device, smaller)


# --------------------------------------------------------------------------- training
def training_need(cfg, device: str) -> Need:
    """A training run (a lab.training.config.TrainConfig): the calculator's training estimate.
    Smaller variants: a shorter max length, batch size 1, a 4-bit base."""
    total = cfg.memory_estimate(device).total_bytes

    def bytes_with(**change) -> int:
        return replace(cfg, **change).memory_estimate(device).total_bytes

    def smaller(budget: int) -> list[str]:
        out = []
        length = cfg.max_length // 2
        while length >= 8:  # the longest halving of max length that fits
            if (b := bytes_with(max_length=length)) <= budget:
                out.append(f"max length {length} (about {fmt_bytes(b)})")
                break
            length //= 2
        if cfg.batch_size > 1 and (b := bytes_with(batch_size=1)) <= budget:
            out.append(f"batch size 1 (about {fmt_bytes(b)})")
        if not get_precision(cfg.precision).four_bit and (b := bytes_with(precision="nf4")) <= budget:
            out.append(f"an nf4 base (QLoRA, about {fmt_bytes(b)})")
        return out

    return Need(f"Training on {cfg.model} (batch {cfg.batch_size}, max length {cfg.max_length}, {cfg.precision})",
                total, device, smaller)

