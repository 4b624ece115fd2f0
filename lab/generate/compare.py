"""Base vs fine-tuned, side by side: one base model, several LoRA adapters, one batched generate.

How it works:
- `AdapterBank` (lab/generate/bank.py) wraps the shared base model (from the ModelRegistry) in ONE
  PeftModel and loads every chosen adapter into it under a name of its own; each session's set of
  adapters is its own. No second copy of the base weights exists.
- `side_by_side` puts one row per column into a single left-padded batch and generates once, naming
  only the session's own adapters. Each row runs its own adapter through
  `lab.generate.mixed_lora.row_lora`: the adapter layers stay off and a hook adds each adapter row's
  LoRA delta in place (no per-step gather/scatter); the base row is the untouched base. Adapters it
  cannot run (LoRA on embeddings, `modules_to_save`, ...) go through peft's own mixed-adapter batches,
  `generate(..., adapter_names=["__base__", "a1", "a2"])`.
- `ColumnStreamer` (a transformers BaseStreamer) splits the batch's new tokens into per-column
  text as they arrive, so all columns stream at the same time.
- DoRA adapters cannot join a mixed batch (neither path computes DoRA per row): they run one after
  another, after the batch, and the result says so.

Between generations the bank keeps the adapter layers *disabled*, so anyone else using the same
registry model (another page, another session) gets the plain base model; and a session's
generation never names another session's adapters.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from lab.data.prompts import build_chat_prompt
from lab.errors import LabError
from lab.generate.adapters import AdapterInfo
from lab.generate.bank import LOCAL, adapter_bank
from lab.generate.small_batch import small_batch_linear

BASE_COLUMN = "base"  # what people (and the CLI's JSON) call that column


# --------------------------------------------------------------------------- settings
@dataclass
class SamplingSettings:
    """One set of decoding settings shared by every column, so the columns are comparable."""

    # 64 new tokens: long enough to see what an adapter changed, short enough for a laptop CPU.
    max_new_tokens: int = 64
    # 0 = greedy (deterministic; the only mode where columns can be checked against plain generate).
    temperature: float = 0.0
    # Nucleus sampling: keep the smallest set of tokens whose probability adds up to top_p.
    top_p: float = 1.0
    # Seeds torch's generator before sampling, so a sampled comparison can be repeated.
    seed: int = 0
    # Wrap the prompt in the model's chat template (instruct models expect it).
    use_chat_template: bool = True
    # Generate at least this many tokens (ignoring end-of-turn before): benchmarks use it to
    # compare runs of exactly equal length. 0 = stop at end-of-turn as usual.
    min_new_tokens: int = 0

    HELP = {
        "max_new_tokens": "Most tokens each column may generate. Columns stop earlier at the end-of-turn token.",
        "temperature": "0 = greedy: always the most likely token (repeatable). Higher = more random sampling.",
        "top_p": (
            "Nucleus sampling: sample only among the most likely tokens whose probabilities add up to top_p. 1 = "
            "all."
        ),
        "seed": "Random seed for sampling: the same seed and settings give the same sampled answers.",
        "use_chat_template": (
            "Wrap the prompt in the model's chat template, as instruct models and chat fine-tunes "
            "expect."
        ),
        "greedy": "Greedy decoding (temperature 0): deterministic, and equal to plain transformers/peft output.",
    }

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def validate(self) -> SamplingSettings:
        if not 1 <= self.max_new_tokens <= 4096:
            raise LabError(f"max new tokens must be between 1 and 4096, got {self.max_new_tokens}.")
        if self.temperature < 0:
            raise LabError(f"Temperature must be 0 (greedy) or positive, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise LabError(f"top-p must be in (0, 1], got {self.top_p}.")
        return self

    def generate_kwargs(self) -> dict:
        kw = {"max_new_tokens": self.max_new_tokens}
        if self.min_new_tokens:
            kw["min_new_tokens"] = self.min_new_tokens
        if self.greedy:
            return {**kw, "do_sample": False}
        return {**kw, "do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}


# --------------------------------------------------------------------------- results
@dataclass
class Column:
    name: str
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    done: bool = False
    batched: bool = True  # False: generated on its own (a DoRA adapter)
    token_ids: list[int] = field(default_factory=list, repr=False)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"text": self.text, "tokens": self.tokens, "seconds": round(self.seconds, 4),
                "tokens_per_s": round(self.tokens_per_s, 2)}


@dataclass
class CompareResult:
    columns: dict[str, Column]
    prompts: dict[str, str]  # the exact text each column's model saw
    settings: SamplingSettings
    wall_seconds: float
    notes: list[str] = field(default_factory=list)
    # How the batched columns ran: "plain" (no adapter), "row-lora" (lab.generate.mixed_lora) or
    # "peft-mixed" (peft's adapter_names batches, for adapters row-lora cannot run).
    route: str = "plain"

    def to_json(self) -> dict:
        cols = dict(self.columns)
        base = cols.pop(BASE_COLUMN)
        return {"base": base.to_json(), "adapters": {n: c.to_json() for n, c in cols.items()},
                "wall_seconds": round(self.wall_seconds, 4), "settings": asdict(self.settings), "notes": self.notes,
                "prompt_text": self.prompts.get(BASE_COLUMN)}


def snapshot(columns: dict[str, Column]) -> dict[str, dict]:
    """A copy of the columns' state that a UI thread can read while generation goes on."""
    return {n: {**c.to_json(), "done": c.done, "batched": c.batched} for n, c in columns.items()}


# --------------------------------------------------------------------------- streaming
class ColumnStreamer(BaseStreamer):
    """Receives the batch's new tokens from `generate` and keeps per-column text up to date.

    `generate` first calls `put(prompt_ids)` (2-D), then `put(next_tokens)` (1-D, one per row)
    every step. A row is finished at its first end-of-sequence token; later tokens in that row
    are padding and are ignored.
    """

    def __init__(self, tokenizer, columns: list[Column], eos_ids: set[int],
                 on_update: Callable[[], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.columns = columns
        self.eos_ids = eos_ids
        self.on_update = on_update
        self.started = time.perf_counter()
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # the prompt itself: not news
            self._prompt_seen = True
            return
        now = time.perf_counter() - self.started
        ids = value.reshape(-1).tolist()
        for col, tok in zip(self.columns, ids, strict=True):
            if col.done:
                continue
            col.token_ids.append(tok)
            col.tokens, col.seconds = len(col.token_ids), now
            col.text = self.tokenizer.decode(col.token_ids, skip_special_tokens=True)
            if tok in self.eos_ids:
                col.done = True
        if self.on_update:
            self.on_update()

    def end(self) -> None:
        now = time.perf_counter() - self.started
        for col in self.columns:
            if not col.done:
                col.done, col.seconds = True, now
        if self.on_update:
            self.on_update()


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event | None) -> None:
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        stop = bool(self.event is not None and self.event.is_set())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


# --------------------------------------------------------------------------- side by side
def eos_token_ids(model, tokenizer) -> set[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def context_length(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def _check_messages(messages: list[dict], column: str) -> None:
    if not messages or not str(messages[-1].get("content", "")).strip():
        raise LabError(f"The prompt{'' if column == BASE_COLUMN else f' for {column}'} is empty.",
                       "Type a question or an instruction first.")


def side_by_side(
    loaded,
    adapters: list[AdapterInfo],
    messages: list[dict] | dict[str, list[dict]],
    settings: SamplingSettings | None = None,
    on_update: Callable[[dict[str, dict]], None] | None = None,
    cancel: threading.Event | None = None,
    owner: str = LOCAL,
) -> CompareResult:
    """Generate with the base and each adapter for the same settings, in one batched generate.

    `messages` is one conversation for every column, or a dict column -> conversation (chat mode,
    where each column keeps its own history). `on_update(snapshot)` is called as tokens arrive.
    `owner` (a session) owns the adapter set: the model's adapters of other owners take no part.
    """
    settings = (settings or SamplingSettings()).validate()
    tokenizer = loaded.tokenizer
    names = [BASE_COLUMN, *[a.name for a in adapters]]
    if len(set(names)) != len(names):
        raise LabError(f"Two columns share a name: {names}.", "Give each adapter a different name.")
    per_column = messages if isinstance(messages, dict) else {n: messages for n in names}
    prompts = {}
    for n in names:
        _check_messages(per_column.get(n, []), n)
        prompts[n] = build_chat_prompt(tokenizer, per_column[n], settings.use_chat_template)

    limit = context_length(loaded.model)
    lengths = {n: len(tokenizer(prompts[n], add_special_tokens=False)["input_ids"]) for n in names}
    for n, length in lengths.items():
        if limit and length + settings.max_new_tokens > limit:
            raise LabError(
                f"The prompt{'' if n == BASE_COLUMN else f' for {n}'} is {length} tokens; with "
                f"{settings.max_new_tokens} "
                f"new tokens that exceeds the model's context of {limit} tokens.",
                "Shorten the prompt (or clear the chat), or lower max new tokens.",
            )

    columns = {n: Column(n) for n in names}
    dora = [a.name for a in adapters if a.use_dora]
    batched = [n for n in names if n not in dora]
    notes = []
    if dora:
        notes.append(f"DoRA adapter(s) {', '.join(dora)} cannot join peft's mixed-adapter batch: they ran one "
                     "after another, after the batched columns.")
    for n in dora:
        columns[n].batched = False

    def update() -> None:
        if on_update:
            on_update(snapshot(columns))

    bank = adapter_bank(loaded)
    with bank.lock:  # this owner's adapter set, then its generate: no change to the model in between
        peft_names = {BASE_COLUMN: None, **bank.use(owner, adapters)}
        started = time.perf_counter()
        with bank.mixed_batch([peft_names[n] for n in batched]) as (model, extra, route), \
                small_batch_linear(loaded.model):  # decoding steps of a few rows: the CPU's fast product
            _generate(model, tokenizer, [columns[n] for n in batched], [prompts[n] for n in batched], extra,
                      settings, update, cancel)
        for n in dora:
            if cancel is not None and cancel.is_set():
                break
            with bank.adapters_enabled() as model:
                bank.activate(peft_names[n])
                _generate(model, tokenizer, [columns[n]], [prompts[n]], {}, settings, update, cancel)
    return CompareResult(columns, prompts, settings, time.perf_counter() - started, notes, route)


@torch.inference_mode()
def _generate(model, tokenizer, columns: list[Column], prompts: list[str], extra: dict,
              settings: SamplingSettings, update, cancel) -> None:
    if not columns:
        return
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                       add_special_tokens=False).to(model.device)
    streamer = ColumnStreamer(tokenizer, columns, eos_token_ids(model, tokenizer), update)
    kwargs = {**settings.generate_kwargs(), **extra}
    if not settings.greedy:
        torch.manual_seed(settings.seed)
    model.generate(**inputs, **kwargs, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
                   stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
