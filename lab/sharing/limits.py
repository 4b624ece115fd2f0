"""Per-request limits: what one person may ask of a shared server in one request.

One dataclass whose fields carry their help text and the environment variable that sets them
(the TrainConfig / TRL field-metadata way): the pages use them as widget maxima and tooltips, the
CLI and the library check requests against them (`check_*`), and `python -m lab limits` prints
them. A request over a limit gets a message naming the value, the limit and the variable.

    QLORA_LAB_MAX_NEW_TOKENS=128 QLORA_LAB_MAX_STEPS=60 streamlit run app.py
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace

from lab.errors import LabError


def _f(default, help: str, env: str, minimum: float = 1):
    return field(default=default, metadata={"help": help, "env": env, "min": minimum})


@dataclass(frozen=True)
class RequestLimits:
    max_new_tokens: int = _f(512, "Most new tokens one column may generate in the playground (and per answer in an "
                             "evaluation). Generation time grows linearly with it.", "QLORA_LAB_MAX_NEW_TOKENS")
    max_adapters: int = _f(4, "Most adapters one comparison may load next to the base (each is a column in one "
                           "batched generate: memory and time grow with the batch).", "QLORA_LAB_MAX_ADAPTERS")
    max_seq_len: int = _f(2048, "Longest sequence in tokens: a training run's max length, and a prompt plus its new "
                          "tokens in the playground. Activation memory grows with it.", "QLORA_LAB_MAX_SEQ_LEN", 8)
    max_batch_size: int = _f(16, "Largest per-device batch size of a training run.", "QLORA_LAB_MAX_BATCH")
    max_steps: int = _f(2000, "Most optimizer steps of one training run.", "QLORA_LAB_MAX_STEPS")
    max_eval_examples: int = _f(200, "Most test examples one evaluation may score.", "QLORA_LAB_MAX_EVAL_EXAMPLES")
    max_queue: int = _f(64, "Most requests waiting in one device's queue; later ones are refused with the room's "
                        "wait, so nobody waits behind an endless line.", "QLORA_LAB_MAX_QUEUE", 1)
    hold_minutes: float = _f(
        30.0,
        "A session keeps the model it last used loaded (its hold) between requests; after this "
        "many idle minutes the hold ends even if the tab stays open, so unused models can be "
        "freed for others.",
        "QLORA_LAB_HOLD_MINUTES",
        0.0,
    )
    headroom: float = _f(
        1.2,
        "Admission multiplies every memory prediction by this before holding it against the free "
        "memory (allocator slack, temporaries the prediction leaves out).",
        "QLORA_LAB_MEMORY_HEADROOM",
        1.0,
    )

    # ------------------------------------------------------------------ reading
    @classmethod
    def meta(cls, name: str) -> dict:
        return {f.name: f.metadata for f in fields(cls)}[name]

    @classmethod
    def help(cls, name: str) -> str:
        m = cls.meta(name)
        return f"{m['help']} Server limit, set by {m['env']}."

    @classmethod
    def from_env(cls, env: dict | None = None) -> RequestLimits:
        """The defaults, overridden by the environment variables that are set (a bad value is a LabError)."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], "").strip()
            if not raw:
                continue
            cast = float if f.type == "float" else int
            try:
                value = cast(raw)
            except ValueError:
                raise LabError(f"{f.metadata['env']}={raw!r} is not a number.",
                               f"Set it to a number (default {f.default}): {f.metadata['help']}") from None
            if value < f.metadata["min"]:
                raise LabError(f"{f.metadata['env']}={raw!r} is below {f.metadata['min']}.",
                               f"Set it to {f.metadata['min']} or more (default {f.default}).")
            values[f.name] = value
        return replace(cls(), **values)

    def to_json(self) -> dict:
        return asdict(self)

    def rows(self) -> list[dict]:
        """One row per limit for tables and `python -m lab limits`: name, value, default, variable, help."""
        return [{"name": f.name, "value": getattr(self, f.name), "default": f.default, "env": f.metadata["env"],
                 "help": f.metadata["help"]} for f in fields(self)]

    # ------------------------------------------------------------------ checking requests
    def check(self, name: str, value: int, what: str) -> None:
        """Refuse `value` when it is over the limit `name`, naming both and the variable."""
        limit = getattr(self, name)
        if value > limit:
            env = self.meta(name)["env"]
            raise LabError(f"{what} {value} is over this server's limit of {limit} ({env}).",
                           f"Use {limit} or less, or ask whoever runs the server to raise {env}.")

    def check_generation(self, max_new_tokens: int, adapters: int = 0) -> None:
        self.check("max_new_tokens", max_new_tokens, "Max new tokens")
        self.check("max_adapters", adapters, "The number of adapters")

    def check_evaluation(self, examples: int, adapters: int = 0, max_new_tokens: int | None = None) -> None:
        self.check("max_eval_examples", examples, "The number of test examples")
        self.check("max_adapters", adapters, "The number of adapters")
        if max_new_tokens is not None:
            self.check("max_new_tokens", max_new_tokens, "Max new tokens per answer")

    def check_training(self, max_steps: int, batch_size: int, max_length: int) -> None:
        """A training run's size (TrainConfig's max_steps, batch_size, max_length)."""
        self.check("max_steps", max_steps, "Max steps")
        self.check("max_batch_size", batch_size, "The batch size")
        self.check("max_seq_len", max_length, "The max length")
