"""The run history as typed rows: what `lab_run.json` and the event log say about each run, read once here so
pages show fields, not `info.get(...)` chains."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from lab.training import runs as R
from lab.training.config import TrainConfig


@dataclass(frozen=True)
class StepMemory:
    """A run's step peak, predicted and measured like for like (lab_run.json's "prediction" and "measured_peak",
    written by lab.training.predicted). None: not known (an older record, a failed prediction, no second step)."""

    predicted_bytes: int | None = None  # the simulation at the run's settings: batch_size × max_length tokens
    batch_size: int | None = None
    max_length: int | None = None
    measured_bytes: int | None = None  # what `counts` says, over step `step`
    counts: str = ""
    step: int | None = None
    measured_batch: int | None = None  # rows and padded tokens of the measured step's batch
    measured_tokens: int | None = None
    simulated_bytes: int | None = None  # the simulation at the measured step's own shape
    error_pct: float | None = None  # (simulated − measured) / measured, at that shape
    error: str | None = None  # why the prediction is missing

    @classmethod
    def from_info(cls, info: dict) -> StepMemory:
        p, m = _dict(info.get("prediction")), _dict(info.get("measured_peak"))
        return cls(p.get("peak_bytes"), p.get("batch_size"), p.get("max_length"), m.get("measured_peak_bytes"),
                   m.get("counts", ""), m.get("step"), m.get("batch_size"), m.get("tokens"),
                   m.get("simulated_peak_bytes"), m.get("error_pct"), p.get("error"))


@dataclass(frozen=True)
class RunRecord:
    """One run of the history. None: the run has no such figure (still running, no eval, an older record)."""

    status: R.RunStatus
    precision: str | None = None
    dataset: str | None = None
    final_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    seconds: float | None = None
    device: str | None = None  # the device type it trained on (the time model's prediction is for that device)
    config: dict = field(default_factory=dict)  # the TrainConfig the run was started with
    predicted_tokens_per_second: float | None = None  # the time model's, recorded as the run started
    memory: StepMemory = field(default_factory=StepMemory)

    @property
    def name(self) -> str:
        return self.status.name

    @property
    def r(self) -> int | None:
        return self.config.get("r")


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def run_record(s: R.RunStatus) -> RunRecord:
    """What `s`'s folder records (lab_run.json), with the live log's last loss while no summary exists yet."""
    info = R.read_run_info(s.run_dir)
    summary, config = _dict(info.get("summary")), _dict(info.get("config"))
    final = summary.get("final_loss")
    if final is None and s.last_log:
        final = s.last_log.get("loss")
    return RunRecord(status=s, precision=info.get("precision"), dataset=_dict(info.get("dataset")).get("name"),
                     final_loss=final, eval_loss=summary.get("final_eval_loss"),
                     tokens_per_second=summary.get("tokens_per_second"),
                     seconds=_dict(info.get("durations")).get("total_seconds"), device=info.get("device"),
                     config=config, predicted_tokens_per_second=_dict(info.get("prediction")).get("tokens_per_second"),
                     memory=StepMemory.from_info(info))


def cell(value, fmt: str = "{}") -> str:
    """A table cell: '—' for a figure the run has not got, never 'None'."""
    return "—" if value is None or value == "" else fmt.format(value)


SETTING_NAMES = tuple(f.name for f in fields(TrainConfig) if f.name != "output")


def settings_table(records: list[RunRecord]) -> dict[str, list[str]]:
    """Runs' settings side by side: one column per run, one row per TrainConfig field."""
    table = {"setting": list(SETTING_NAMES)}
    for rec in records:
        table[rec.name] = [cell(rec.config.get(k)) for k in SETTING_NAMES]
    return table
