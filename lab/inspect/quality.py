"""What a precision costs in quality: perplexity on a fixed text and greedy answers to fixed prompts.

The text (assets/eval_text.txt, ~1.4k tokens with the SmolLM2 tokenizer) was written for the lab,
so no model has seen it verbatim. Perplexity is exp(mean next-token negative log-likelihood) over
non-overlapping windows, so every precision is scored on exactly the same tokens.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lab.data.prompts import generate_text
from lab.paths import ASSETS_DIR

EVAL_TEXT_PATH = ASSETS_DIR / "eval_text.txt"

DEFAULT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "In one sentence, what does a lighthouse keeper do?",
    "List three primary colors.",
)


# Help texts shared by the CLI flags and the page's tooltips.
HELP: dict[str, str] = {
    "perplexity_tokens": "Tokens of assets/eval_text.txt to read at each precision (0 skips perplexity), in "
    "windows of 256: each window's first token has no context, so N tokens read give N − 1 per window predicted. "
    "Lower perplexity = the model finds the text less surprising. bf16/fp16 on CPU are slow: keep it small there.",
    "window": "Tokens per forward pass; windows do not overlap, so every precision sees exactly the same contexts.",
    "prompts": "One prompt per line. Each precision answers the same prompts greedily (no sampling), so any "
    "difference in the answers comes from the weights.",
    "max_new_tokens": "Tokens each greedy answer may generate.",
}


@dataclass
class QualityConfig:
    # Tokens of the eval text to score. 512 keeps a bf16 load on CPU (~20x slower matmuls) under a
    # minute; 0 skips perplexity entirely.
    perplexity_tokens: int = 512
    # Tokens per forward pass. Windows do not overlap, so the first token of each has no context.
    window: int = 256
    # Greedy answers: same prompts at every precision so differences come from the weights only.
    prompts: tuple[str, ...] = DEFAULT_PROMPTS
    max_new_tokens: int = 32


@dataclass
class PerplexityResult:
    perplexity: float
    mean_nll: float
    tokens: int  # tokens predicted (each window's first token has nothing to be predicted from)
    seconds: float
    read: int = 0  # tokens of the text read: `tokens` + one per window
    windows: int = 0

    def to_json(self) -> dict:
        return asdict(self)


def describe_tokens(predicted: int, read: int, windows: int) -> str:
    """'510 predicted of 512 read (2 windows of up to 256; a window's first token has no context, so it is not
    predicted)': why a perplexity over N tokens counts N − windows."""
    if not read or read == predicted:
        return f"{predicted} predicted tokens"
    return (f"{predicted} predicted tokens of the {read} read: {windows} window{'s' * (windows != 1)}, and a "
            "window's first token has no context before it, so it is read but not predicted")


def eval_text(path: Path | None = None) -> str:
    return (path or EVAL_TEXT_PATH).read_text()


@torch.inference_mode()
def perplexity(model, tokenizer, text: str | None = None, max_tokens: int = 512, window: int = 256,
               cancel=None) -> PerplexityResult:
    """Perplexity of `model` on the first `max_tokens` tokens of `text` (default: the shipped text)."""
    started = time.perf_counter()
    ids = tokenizer(text if text is not None else eval_text(), return_tensors="pt", add_special_tokens=False)[
        "input_ids"
    ][0]
    ids = ids[:max_tokens] if max_tokens else ids
    device = next(model.parameters()).device
    total_nll, predicted, read, windows = 0.0, 0, 0, 0
    for start in range(0, len(ids), window):
        if cancel is not None and cancel.is_set():
            break
        chunk = ids[start:start + window].unsqueeze(0).to(device)
        if chunk.shape[1] < 2:
            continue
        logits = model(input_ids=chunk).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[0, :-1], chunk[0, 1:], reduction="sum")
        total_nll += nll.item()
        predicted += chunk.shape[1] - 1
        read += chunk.shape[1]
        windows += 1
    mean = total_nll / max(predicted, 1)
    return PerplexityResult(math.exp(mean), mean, predicted, time.perf_counter() - started, read, windows)


def greedy_answers(model, tokenizer, prompts: Sequence[str] = DEFAULT_PROMPTS, max_new_tokens: int = 32,
                   report: Callable[..., None] | None = None, cancel=None) -> list[dict]:
    """[{'prompt', 'answer'}] — greedy decoding, the chat template applied when there is one."""
    answers = []
    for i, prompt in enumerate(prompts):
        if cancel is not None and cancel.is_set():
            break
        if report is not None:
            report(f"answering prompt {i + 1}/{len(prompts)}")
        answers.append(
            {"prompt": prompt, "answer": generate_text(model, tokenizer, prompt, max_new_tokens=max_new_tokens).strip()}
        )
    return answers
