"""Shared fixtures: a tiny random Llama that loads in well under a second, and the embedded model.

The tiny model borrows the embedded model's tokenizer (no Hub here), so its vocabulary is real
and chat templates work; its weights are random, so only behaviour, not quality, is tested on it.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

# The main module this process started with. AppTest leaves the last page script it ran installed as __main__, and a
# process that multiprocessing starts imports the asking process's main script first (tests/test_pool.py puts this
# one back while it starts simulation processes, as a server's __main__ is app.py, which only imports there).
STARTED_AS_MAIN = sys.modules["__main__"]

# One intra-op thread per process (torch reads this when it starts its thread pool): the suite runs a worker per core
# (pytest-xdist), each starting training processes, servers and CLIs beside the other's, and two threads per process
# on two cores spun against each other. make test, quiet, here: 349 s with it, 380-413 s without (same 605 tests).
# Tests about threads set their own; a developer's OMP_NUM_THREADS wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# Tests never touch the user's cache or runs folder, and each pytest process has its own runs/: pytest-xdist's
# workers inherit the controller's environment, so a setdefault here gave every worker the same runs/ and one
# training lock, and a training test on one worker met "Another training is running" from another (-n 4).
_TEST_HOME = Path(tempfile.mkdtemp(prefix="qlora-lab-tests-"))
os.environ["QLORA_LAB_RUNS"] = str(_TEST_HOME / "runs")
# The lab's cache too (the CPU probe keeps its sibling's figure there): a test run writes nothing into the user's
# ~/.cache/qlora-lab. The embedded model is still found where `make setup` prepared it (lab.models.sources reads
# the default cache when this one has no copy). Unlike runs/, one cache serves the controller and its workers
# (named once, inherited): what one worker keeps (the probe's figure, about 4 CPU seconds of a subprocess; a built
# architecture) the other reads. Its files are written atomically, and tests about the cache bring their own.
os.environ.setdefault("QLORA_LAB_TEST_CACHE", str(_TEST_HOME / "cache"))
os.environ["QLORA_LAB_CACHE"] = os.environ["QLORA_LAB_TEST_CACHE"]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# No queue-watcher thread in pytest's own process (AppTest apps): it would outlive its test and start
# queued runs in later tests' folders. Browser tests' servers (separate processes) turn it back on.
os.environ.setdefault("QLORA_LAB_QUEUE_WATCH", "0")
# No calculator warm-up in the suite's apps and servers (seconds of CPU each, for an answer most tests never ask
# for); tests/test_warmup.py turns it on where it is the subject.
os.environ.setdefault("QLORA_LAB_WARMUP", "0")
# Nor simulation processes (lab.estimate.pool): the inverse question's searches run in the asking process, one after
# the other, as the suite's two workers already fill both cores; tests/test_pool.py makes a pool for its tests.
os.environ.setdefault("QLORA_LAB_SIM_PROCESSES", "0")

import lab  # noqa: E402,F401  (quiets noisy libraries before anything loads)
from lab.models.sources import prepare_embedded_model  # noqa: E402

TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The prepared embedded SmolLM2-135M-Instruct folder (built by `make setup`)."""
    return prepare_embedded_model()


def build_tiny_model(folder: Path, tokenizer_dir: Path, model_type: str = "llama", **overrides) -> Path:
    """Save a tiny random causal LM of `model_type` with the embedded tokenizer into `folder`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        **{**TINY_LLAMA, **overrides},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer, 64-wide random Llama saved as an ordinary HF model folder."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_dir)


# Browser fixtures (app_server, browser, page) for tests marked `browser`.
from tests.browser import app_server, browser, page  # noqa: E402,F401


@pytest.fixture
def fake_training():
    """A live process that runs.pid_alive accepts as a lab training (its command line says `lab train`)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "lab", "train"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def fresh_server(tmp_path, monkeypatch):
    """A new server's worth of shared state for an in-process (AppTest) test, and an empty runs/: the shared
    models of one process outlive its tests, so a test that reads the loaded models (or the Playground, which
    preselects the newest run on its base) would otherwise see what earlier tests in that process left there,
    and pass or fail with the order the tests ran in."""
    from pages._ui import shared_models

    monkeypatch.setenv("QLORA_LAB_RUNS", str(tmp_path / "runs"))
    shared_models.clear()
    yield
    shared_models.clear()


def wait_for(predicate, timeout: float = 180, interval: float = 0.3):
    """Poll `predicate` until it returns something truthy (returned), or raise TimeoutError."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
