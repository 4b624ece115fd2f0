"""QLoRA/LoRA training: config (options + help), runner (one run), events (live log + stop),
runs (lock, status, history, starting the CLI as a process), queue (one run at a time, the rest
waiting on disk; stopping and deleting a run), owners (who started a run, who may control it)."""

from lab.training.config import TrainConfig, default_config, run_name
from lab.training.events import read_events, request_stop
from lab.training.runs import active_run, list_runs, run_status, start_training

__all__ = ["TrainConfig", "default_config", "run_name", "read_events", "request_stop", "active_run", "list_runs",
           "run_status", "start_training"]
