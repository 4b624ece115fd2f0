"""Base vs adapters on a test split: a measured verdict, not an impression.

For every example the base and every adapter answer in ONE batched greedy generate (the same
machinery as the side-by-side columns), and one batched forward pass scores the reference
answer under each model. Metrics per model:

- labelled sets (every reference is a short label, like banking-intents): exact-match accuracy
  of the stripped greedy answer;
- every set: the reference answer's mean token loss and perplexity exp(loss), the tokens counted
  being exactly those training learns (the answer and its end-of-turn).

Prompts are rendered by the one prompt builder training uses (`lab.data.prompts.build_chat_prompt`),
so the adapter is asked the way it was taught.
"""

from __future__ import annotations

import csv
import io
import math
import re
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lab.data.datasets import load_rows, prompt_and_answer, render_example
from lab.data.prompts import build_chat_prompt
from lab.errors import LabError
from lab.generate.adapters import AdapterInfo, base_mismatch
from lab.generate.bank import LOCAL, adapter_bank
from lab.generate.compare import BASE_COLUMN, SamplingSettings, side_by_side
from lab.publish.card import record_evaluation

METRICS = {
    "auto": "accuracy for labelled sets (every reference a short label without spaces, like banking-intents), "
    "perplexity for the others",
    "accuracy": "exact match of the stripped greedy answer with the reference (plus loss/perplexity)",
    "perplexity": "loss and perplexity of the reference answers only (answers are still generated for the table)",
}
_LABEL = re.compile(r"^[\w\-./:]{1,64}$")


@dataclass
class EvalSettings:
    """How an evaluation runs."""

    # A first look that takes a minute or two on a CPU (the whole banking test split, 72 examples, takes
    # several); None / 0 evaluates the whole split.
    limit: int | None = 16
    # auto | accuracy | perplexity (see METRICS).
    metric: str = "auto"
    # New tokens per answer; None = enough for the longest reference (+4), at most 128.
    max_new_tokens: int | None = None

    HELP = {
        "limit": "Evaluate only the first N test examples (the whole split when empty or 0; banking-intents has 72). "
        "CPU time grows linearly.",
        "metric": "; ".join(f"{k}: {v}" for k, v in METRICS.items()),
        "max_new_tokens": (
            "Tokens each model may generate per answer. Default: enough for the longest reference "
            "answer."
        ),
    }


@dataclass
class Example:
    messages: list[dict]
    answer: str


def load_examples(dataset: str, limit: int | None = None) -> list[Example]:
    """The test split of a bundled dataset or a folder (its test.jsonl), or every row of a single
    file (an uploaded test set), as (prompt messages, reference answer)."""
    rows = load_rows(dataset, "train" if Path(dataset).expanduser().is_file() else "test")
    if not rows:
        raise LabError(f"Dataset {dataset!r} has no test rows.", "Give a file with at least one example.")
    rows = rows[:limit] if limit else rows
    return [Example(*prompt_and_answer(r)) for r in rows]


def is_labelled(examples: list[Example]) -> bool:
    """Every reference a short label: one word or identifier, no spaces (a classification set such as
    banking-intents). Judged per reference, never by how often labels repeat: the first 8 of
    banking-intents' 72 test rows carry 8 different labels, and they are labels all the same."""
    answers = [e.answer.strip() for e in examples]
    return bool(answers) and all(_LABEL.match(a) for a in answers)


def normalize(text: str) -> str:
    """What exact match compares: first line, stripped, lower case, no surrounding quotes or final dot."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip("`'\"").rstrip(".").strip().lower()


def _answer_text(tokenizer, messages: list[dict], answer: str) -> str:
    """The answer as training appends it after the prompt (with the template's end-of-turn)."""

    prompt, completion = render_example(tokenizer, {"messages": [*messages, {"role": "assistant", "content": answer}]})
    return completion


# --------------------------------------------------------------------------- results
@dataclass
class EvalResult:
    dataset: str
    models: list[str]
    metric: str  # accuracy | perplexity
    rows: list[dict]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, dict]:
        out = {}
        for m in self.models:
            n_tok = sum(r["answer_tokens"] for r in self.rows)
            nll = sum(r["loss"][m] * r["answer_tokens"] for r in self.rows)
            loss = nll / n_tok if n_tok else float("nan")
            d = {"examples": len(self.rows), "loss": round(loss, 4), "perplexity": round(math.exp(loss), 3)}
            if self.metric == "accuracy":
                correct = sum(bool(r["correct"][m]) for r in self.rows)
                d |= {"correct": correct, "accuracy": round(correct / len(self.rows), 4) if self.rows else 0.0}
            out[m] = d
        return out

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "metric": self.metric, "models": self.models, "metrics": self.metrics(),
                "rows": self.rows, "seconds": round(self.seconds, 2), "warnings": self.warnings}


# --------------------------------------------------------------------------- scoring
@torch.inference_mode()
def _answer_losses(bank, tokenizer, prompt: str, answer: str, names: list[str], dora: set[str],
                   peft_names: dict[str, str | None]) -> tuple[list[float], int]:
    """Mean token loss of `answer` after `prompt` under each model (column name -> peft adapter
    name in `peft_names`): one batched forward pass."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not a_ids:
        return [0.0] * len(names), 0
    ids = torch.tensor([p_ids + a_ids], device=bank.model.device)
    losses: dict[str, float] = {}

    def score(model, group: list[str], **kw) -> None:
        logits = model(input_ids=ids.expand(len(group), -1), **kw).logits[:, len(p_ids) - 1:-1].float()
        target = ids[0, len(p_ids):].expand(len(group), -1)
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none").mean(dim=1)
        losses.update(zip(group, nll.tolist(), strict=True))

    batched = [n for n in names if n not in dora]
    with bank.mixed_batch([peft_names[n] for n in batched]) as (model, extra, _route):
        score(model, batched, **extra)
    for n in names:
        if n in dora:
            with bank.adapters_enabled() as model:
                bank.activate(peft_names[n])
                score(model, [n])
    return [losses[n] for n in names], len(a_ids)


def evaluate(
    loaded,
    adapters: list[AdapterInfo],
    examples: list[Example],
    dataset: str = "dataset",
    settings: EvalSettings | None = None,
    on_progress: Callable[[int, int, dict], None] | None = None,
    cancel: threading.Event | None = None,
    owner: str = LOCAL,
    turn: Callable[[], AbstractContextManager] | None = None,
) -> EvalResult:
    """Run base and adapters over `examples`; `on_progress(done, total, row)` after each example.

    `owner` owns the adapter set (see lab/generate/bank.py). Each example runs inside `turn()` when
    given (a turn in the device's queue), so other people's requests run between examples instead of
    waiting for the whole evaluation."""
    settings = settings or EvalSettings()
    if settings.metric not in METRICS:
        raise LabError(f"Unknown metric {settings.metric!r}.", f"Choose one of: {', '.join(METRICS)}.")
    if not examples:
        raise LabError(f"Dataset {dataset!r} has no examples to evaluate.")
    tokenizer = loaded.tokenizer
    metric = settings.metric if settings.metric != "auto" else ("accuracy" if is_labelled(examples) else "perplexity")
    names = [BASE_COLUMN, *[a.name for a in adapters]]
    dora = {a.name for a in adapters if a.use_dora}
    bank = adapter_bank(loaded)
    longest = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples)
    gen = SamplingSettings(max_new_tokens=settings.max_new_tokens or min(longest + 4, 128))

    rows, started = [], time.perf_counter()
    for i, ex in enumerate(examples):
        if cancel is not None and cancel.is_set():
            break
        prompt = build_chat_prompt(tokenizer, ex.messages)
        with turn() if turn is not None else nullcontext(), bank.lock:
            if cancel is not None and cancel.is_set():  # cancelled while this example waited its turn
                break
            peft_names = {BASE_COLUMN: None, **bank.use(owner, adapters)}
            # The prompt exactly as training renders it, sent as raw text (no second template).
            result = side_by_side(loaded, adapters, [{"role": "user", "content": prompt}],
                                  SamplingSettings(**{**gen.__dict__, "use_chat_template": False}), owner=owner)
            losses, n_tok = _answer_losses(bank, tokenizer, prompt, _answer_text(tokenizer, ex.messages, ex.answer),
                                           names, dora, peft_names)
        row = _row(i, ex, {n: result.columns[n].text.strip() for n in names}, dict(zip(names, losses, strict=True)),
                   n_tok, metric)
        rows.append(row)
        if on_progress:
            on_progress(i + 1, len(examples), row)
    result = EvalResult(dataset, names, metric, rows, time.perf_counter() - started)
    if len(rows) == len(examples):  # a complete evaluation (not cancelled) goes on the runs' cards
        result.warnings += record_in_runs(result, adapters, loaded)
    return result


def _row(i: int, ex: Example, answers: dict[str, str], losses: dict[str, float], n_tok: int, metric: str) -> dict:
    """One example's row of an EvalResult: every model's answer and loss, and whether each is right."""
    row = {
        "index": i,
        "prompt": ex.messages[-1]["content"] if ex.messages else "",
        "reference": ex.answer,
        "answers": answers,
        "loss": {n: round(v, 4) for n, v in losses.items()},
        "answer_tokens": n_tok,
        "differs": len({normalize(a) for a in answers.values()}) > 1,
    }
    if metric == "accuracy":
        row["correct"] = {n: normalize(a) == normalize(ex.answer) for n, a in answers.items()}
    return row


def record_in_runs(result: EvalResult, adapters: list[AdapterInfo], loaded) -> list[str]:
    """Record base vs adapter in the run folder of every adapter that came from a training run here, and
    refresh its model card. Skipped: Hub downloads (the cache is not ours) and adapters evaluated on
    another base than theirs (not the adapter's result). Returns warnings for records that failed."""

    metrics, notes = result.metrics(), []
    for a in adapters:
        if a.run_dir is None or a.kind == "hub" or base_mismatch(a, loaded.source):
            continue
        entry = {"dataset": result.dataset, "metric": result.metric, "examples": len(result.rows),
                 "base": metrics[BASE_COLUMN], "adapter": metrics[a.name], "base_model": loaded.source.display_name,
                 "precision": loaded.precision, "seconds": round(result.seconds, 2), "finished": time.time()}
        try:
            record_evaluation(a.run_dir, entry)
        except (LabError, OSError) as e:
            notes.append(f"Could not record the evaluation in {a.run_dir}: {e}")
    return notes


# --------------------------------------------------------------------------- following and showing one
class EvalProgress:
    """An evaluation's progress line for a page: every message (the queue's turns included) says which
    example of how many it is about, and carries the rows scored so far."""

    def __init__(self, report: Callable[..., None], total: int) -> None:
        self.report, self.total, self.rows = report, total, []

    def message(self, text: str, fraction: float | None = None, partial=None, state: str | None = None) -> None:
        k = min(len(self.rows) + 1, self.total)
        self.report(f"Example {k} of {self.total} · {text}", len(self.rows) / self.total, list(self.rows), state)

    def scored(self, done: int, total: int, row: dict) -> None:
        self.rows.append(row)
        self.report(f"Example {done} of {total} scored", done / total, list(self.rows))


def shown_prompts(rows: list[dict]) -> list[str]:
    """What tells the examples apart: when every prompt starts with the same paragraphs (one shared
    instruction, then the customer's query), only what follows them; else the whole prompt."""
    split = [r["prompt"].split("\n\n") for r in rows]
    if not split or any(len(parts) < 2 for parts in split) or len({"\n\n".join(p[:-1]) for p in split}) > 1:
        return [r["prompt"] for r in rows]
    return [parts[-1] for parts in split]


MARKS = {True: "✓", False: "✗"}  # text marks: emoji (✅/❌) show as boxes where no emoji font is installed


def example_rows(r: EvalResult) -> list[dict]:
    """The page's table of examples: the query, the reference, each model's answer (marked right or wrong
    when scored by accuracy) and its loss."""
    acc = r.metric == "accuracy"
    return [{"#": row["index"], "differs": row["differs"], "prompt": prompt, "reference": row["reference"],
             **{n: f"{MARKS[bool(row['correct'][n])]} {row['answers'][n]}" if acc else row["answers"][n]
                for n in r.models},
             **{f"loss {n}": row["loss"][n] for n in r.models}}
            for row, prompt in zip(r.rows, shown_prompts(r.rows), strict=True)]


# --------------------------------------------------------------------------- reports
def _cell(text: str, width: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def to_markdown(r: EvalResult) -> str:
    """A report to paste into a README or an issue: metrics, then every example."""
    m = r.metrics()
    acc = r.metric == "accuracy"
    lines = [f"# Evaluation on {r.dataset}", "",
             f"{len(r.rows)} test examples, greedy decoding, metric: {r.metric}.", ""]
    head = ["model", *(["accuracy", "correct"] if acc else []), "loss", "perplexity"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, d in m.items():
        cells = [name, *([f"{d['accuracy']:.1%}", f"{d['correct']}/{d['examples']}"] if acc else []),
                 f"{d['loss']:.3f}", f"{d['perplexity']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Examples", "", "Rows where the models' answers differ are marked **≠**.", ""]
    head = ["#", "≠", "prompt", "reference", *r.models]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, prompt in zip(r.rows, shown_prompts(r.rows), strict=True):
        answers = []
        for n in r.models:
            a = _cell(row["answers"][n], 60).replace("|", "\\|")
            if acc:
                a = ("✅ " if row["correct"][n] else "❌ ") + a
            answers.append(a)
        lines.append("| " + " | ".join([str(row["index"]), "**≠**" if row["differs"] else "",
                                         _cell(prompt, 60).replace("|", "\\|"),
                                         _cell(row["reference"], 40).replace("|", "\\|"), *answers]) + " |")
    return "\n".join(lines) + "\n"


def to_csv(r: EvalResult) -> str:
    """One line per example: prompt, reference, each model's answer, correctness and loss."""
    buf = io.StringIO()
    w = csv.writer(buf)
    acc = r.metric == "accuracy"
    w.writerow(
        [
            "index",
            "differs",
            "prompt",
            "reference",
            *[f"{n}_{k}" for n in r.models for k in (("answer", "correct", "loss") if acc else ("answer", "loss"))],
        ]
    )
    for row in r.rows:
        cells = []
        for n in r.models:
            cells += [row["answers"][n], *([row["correct"][n]] if acc else []), row["loss"][n]]
        w.writerow([row["index"], row["differs"], row["prompt"], row["reference"], *cells])
    return buf.getvalue()
