"""Where the lab keeps things on disk."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
RUN_FILE = "lab_run.json"  # a run folder's record (lab.training.runner writes it; the playground reads it)


def cache_dir() -> Path:
    """Model cache (the converted embedded model lives here). Override with QLORA_LAB_CACHE."""
    env = os.environ.get("QLORA_LAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qlora-lab"


def runs_dir() -> Path:
    """Training runs (one folder each). Override with QLORA_LAB_RUNS."""
    env = os.environ.get("QLORA_LAB_RUNS")
    return Path(env).expanduser() if env else REPO_ROOT / "runs"
