"""Where the lab keeps things on disk.

Inside a Hugging Face Space the container's disk is wiped on every restart; only `/data` (the
Space's persistent storage, when it is enabled) survives. So when a persistent folder exists,
runs, the model cache and the Hub download cache live there, and a restart loses nothing.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
RUN_FILE = "lab_run.json"  # a run folder's record (lab.training.runner writes it; the playground reads it)
SPACE_DATA_DIR = Path("/data")  # where Spaces mount persistent storage
PERSISTENT_SUBDIR = "qlora-lab"


def persistent_dir() -> Path | None:
    """The persistent storage to keep runs and caches in, or None.

    QLORA_LAB_DATA names it explicitly (tests point it at a temporary folder); otherwise it is
    /data inside a Space (SPACE_ID set). Only an existing, writable folder counts: a Space
    without persistent storage keeps the defaults. Outside a Space /data is not looked at, so
    an unrelated /data on a Linux box never captures a laptop's runs."""
    env = os.environ.get("QLORA_LAB_DATA")
    candidate = Path(env).expanduser() if env else (SPACE_DATA_DIR if os.environ.get("SPACE_ID") else None)
    if candidate is None or not candidate.is_dir() or not os.access(candidate, os.W_OK):
        return None
    return candidate / PERSISTENT_SUBDIR


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "qlora-lab"


def cache_dir() -> Path:
    """Model cache (the converted embedded model lives here). QLORA_LAB_CACHE overrides; else the
    persistent storage when there is one; else ~/.cache/qlora-lab."""
    env = os.environ.get("QLORA_LAB_CACHE")
    if env:
        return Path(env).expanduser()
    data = persistent_dir()
    return data / "cache" if data is not None else default_cache_dir()


def runs_dir() -> Path:
    """Training runs (one folder each). QLORA_LAB_RUNS overrides; else the persistent storage when
    there is one; else runs/ in the repo."""
    env = os.environ.get("QLORA_LAB_RUNS")
    if env:
        return Path(env).expanduser()
    data = persistent_dir()
    return data / "runs" if data is not None else REPO_ROOT / "runs"


def uploads_dir() -> Path:
    """Uploaded files (datasets a run trains on, test files) live inside runs/, so a run that
    trains on an upload survives a restart and public mode has one folder to write to."""
    return runs_dir() / "uploads"


def configure_hub_cache() -> None:
    """Point the Hugging Face download cache at the persistent storage (unless HF_HOME is set).
    Must run before huggingface_hub is imported: it reads HF_HOME once, at import."""
    data = persistent_dir()
    if data is not None:
        os.environ.setdefault("HF_HOME", str(data / "huggingface"))
