"""The foundation: model sources, precisions, the CLI, the task runner, the library boundary."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from lab.cli import main
from lab.environment import device_type
from lab.errors import LabError
from lab.models.loading import load_model
from lab.models.precision import PRECISIONS, bnb_config, load_kwargs, resolve_dtype
from lab.models.registry import ModelRegistry
from lab.models.sources import embedded_model_ready, resolve_source
from lab.tasks import BackgroundTask

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_lab_never_imports_streamlit():
    imports = re.compile(r"^\s*(import|from)\s+streamlit\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "lab").rglob("*.py") if imports.search(p.read_text())]
    assert offenders == []
    # And importing the whole CLI does not drag it in transitively.
    code = "import sys, lab.cli; lab.cli.command_modules(); print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_embedded_folder_is_a_plain_checkpoint(embedded_dir):
    assert embedded_model_ready()
    config = json.loads((embedded_dir / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker was stripped
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30
    assert (embedded_dir / "model.safetensors").is_file()
    assert resolve_source("embedded").path == embedded_dir


def test_resolve_sources(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("lab.models.hub.hub_reachable", lambda timeout=2.0: True)  # the Hub, as if online
    assert resolve_source(str(tiny_model_dir)).kind == "folder"
    assert resolve_source(str(tiny_model_dir / "config.json")).kind == "config"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    with pytest.raises(LabError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(LabError, match="neither an existing folder"):
        resolve_source("./does/not/exist")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabError, match="not valid JSON"):
        resolve_source(str(bad)).load_config()


def _fake_hub_cache(root: Path, hub_id: str, model_dir: Path | None) -> Path:
    """The Hugging Face cache layout (models--owner--name/refs/main, snapshots/<sha>/...) with `model_dir`'s files."""
    import shutil

    repo = root / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    if model_dir is not None:
        for f in model_dir.iterdir():
            shutil.copy(f, snapshot / f.name)
    return snapshot


def test_uncached_hub_id_offline_fails_at_once_with_hints_that_fit(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probes = []
    monkeypatch.setattr("socket.create_connection", lambda *a, **k: probes.append(a))
    with pytest.raises(LabError) as loading:
        resolve_source("someone/not-cached", weights=True)
    assert "not in this machine's Hugging Face Hub cache" in str(loading.value)
    assert "HF_HUB_OFFLINE" in str(loading.value)
    assert "catalog" not in str(loading.value) and "'embedded'" in str(loading.value)  # a page that loads weights
    with pytest.raises(LabError) as estimating:
        resolve_source("someone/not-cached")
    assert "catalog name" in str(estimating.value)  # the calculator can use one
    with pytest.raises(LabError, match="neither an existing model folder nor a Hub id") as bad:
        resolve_source("no-such-name", weights=True)
    assert "catalog" not in str(bad.value)
    with pytest.raises(LabError, match="config without weights") as catalog:
        resolve_source("Llama-3.2-1B", weights=True)
    assert str(catalog.value).count("config without weights") == 1
    assert probes == []  # HF_HUB_OFFLINE: no network probe at all


def test_no_network_is_detected_without_waiting_for_retries(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from lab.models import hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(hub, "_probe", {})
    probes = []

    def no_network(address, timeout=None):
        probes.append(address)
        raise OSError("Name or service not known")

    monkeypatch.setattr("socket.create_connection", no_network)
    for _ in range(2):
        with pytest.raises(LabError, match="cannot reach the Hugging Face Hub"):
            resolve_source("someone/not-cached", weights=True)
    assert len(probes) == 1 and probes[0][1] == 443  # probed once, then remembered


def test_cached_hub_id_offline_loads_from_its_snapshot(monkeypatch, tmp_path, tiny_model_dir):
    from huggingface_hub import constants

    snapshot = _fake_hub_cache(tmp_path, "someone/tiny", tiny_model_dir)
    _fake_hub_cache(tmp_path, "someone/config-only", None)
    (tmp_path / "models--someone--config-only" / "snapshots" / ("0" * 40) / "config.json").write_text(
        (tiny_model_dir / "config.json").read_text())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = resolve_source("someone/tiny", weights=True)
    assert source.kind == "hub" and source.pretrained_id == str(snapshot) and source.display_name == "someone/tiny"
    loaded = load_model("someone/tiny", "fp32")
    assert loaded.source.display_name == "someone/tiny"
    assert resolve_source("someone/config-only").load_config().model_type == "llama"  # a config is enough here
    with pytest.raises(LabError, match="no weights"):
        resolve_source("someone/config-only", weights=True)


def test_hub_id_offline_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabError, match="Hugging Face Hub"):
        load_model("someone/some-model-that-is-not-cached", "fp32")


@pytest.mark.parametrize("name", list(PRECISIONS))
def test_precision_mapping(name):
    cfg = bnb_config(name, device="cpu")
    kwargs = load_kwargs(name, device="cpu")
    if name in ("fp32", "bf16", "fp16"):
        assert cfg is None and "quantization_config" not in kwargs
        assert kwargs["dtype"] == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    elif name == "int8":
        assert cfg.load_in_8bit and not cfg.load_in_4bit
    else:
        assert cfg.load_in_4bit
        assert cfg.bnb_4bit_quant_type == ("fp4" if name == "fp4" else "nf4")
        assert cfg.bnb_4bit_use_double_quant == (name == "nf4-dq")
        assert cfg.bnb_4bit_compute_dtype == torch.float32  # CPU computes in fp32
    # one meaning per word: 'compute' is the device's compute dtype, 'auto' the checkpoint's own
    assert resolve_dtype("compute", device="cpu").torch_dtype == torch.float32
    assert resolve_dtype("auto", config_dtype="bfloat16").name == "bf16"
    assert resolve_dtype("auto", config_dtype=None).name == "fp32"


@pytest.mark.parametrize("precision, linear", [("fp32", "Linear"), ("int8", "Linear8bitLt"), ("nf4", "Linear4bit")])
def test_load_tiny_model(tiny_model_dir, precision, linear):
    loaded = load_model(str(tiny_model_dir), precision)
    q_proj = loaded.model.model.layers[0].self_attn.q_proj
    assert type(q_proj).__name__ == linear
    assert loaded.load_seconds > 0 and loaded.device == device_type()  # the default: this machine's device
    # It runs: one forward pass gives finite logits of the right shape.
    ids = loaded.tokenizer("hello world", return_tensors="pt").to(loaded.model.device)
    logits = loaded.model(**ids).logits
    assert logits.shape[-1] == loaded.model.config.vocab_size and torch.isfinite(logits).all()


def test_registry_shares_and_frees(tiny_model_dir):
    reg = ModelRegistry()
    a = reg.get(str(tiny_model_dir), "fp32")
    assert reg.get(str(tiny_model_dir), "fp32") is a  # no second copy
    assert reg.loaded() == [(str(tiny_model_dir), "fp32", "compute")]
    assert reg.free_unused() == [(str(tiny_model_dir), "fp32", "compute")] and reg.loaded() == []  # nobody held it


def test_background_task_reports_and_fails_cleanly():
    def work(n, report, cancel):
        for i in range(n):
            report(f"step {i}", (i + 1) / n, partial=i)
        return n * 2

    t = BackgroundTask("ok", work, (3,)).start().wait(120)
    assert t.status == "done" and t.result == 6 and t.partial == 2 and len(t.progress) == 3

    def boom(report, cancel):
        raise LabError("bad rank 0", "use r >= 1")

    t = BackgroundTask("bad", boom).start().wait(120)
    assert t.status == "failed" and t.error == "bad rank 0 use r >= 1"

    started = threading.Event()

    def slow(report, cancel):
        started.set()
        while not cancel.is_set():
            time.sleep(0.01)
        return "stopped"

    t = BackgroundTask("slow", slow).start()
    started.wait(120)
    assert t.poll().running
    t.cancel()
    assert t.wait(120).status == "cancelled"


EXIT_WITH_A_TASK_IN_TORCH = """
import threading, torch
from lab.tasks import BackgroundTask
inside = threading.Event()

def work(report, cancel):
    a = torch.randn(256, 256)
    while not cancel.is_set():
        inside.set()
        for _ in range(50):
            a = torch.tanh(a @ a)
    return "cancelled at exit"

BackgroundTask("busy", work).start()
inside.wait(60)
"""


@pytest.mark.slow
def test_a_process_ending_while_a_task_computes_exits_cleanly():
    """A server stopped (or an AppTest ended) while the calculator simulated aborted with exit 134, "terminate
    called without an active exception": a daemon thread inside torch as the interpreter finalized. lab.tasks
    cancels and waits for its tasks at exit."""
    p = subprocess.run([sys.executable, "-c", EXIT_WITH_A_TASK_IN_TORCH], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "terminate called" not in p.stderr


def test_cli_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in (
        "device",
        "torch",
        "transformers",
        "peft",
        "bitsandbytes",
        "embedded_model_ready",
        "embedded_model_path",
    ):
        assert key in info
    assert info["embedded_model_ready"] is True and info["device"] == device_type()
    assert info["torch"] == torch.__version__


def test_cli_prepare_json_says_where_the_embedded_model_is(capsys, embedded_dir):
    assert main(["prepare", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["path"] == str(embedded_dir) and out["built"] is False  # already prepared: nothing rebuilt


@pytest.mark.slow
def test_cli_bad_input_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "info", "--no-such-flag"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_a_reader_that_closes_the_pipe_early_gets_no_traceback():
    """`python -m lab lora ... | head -1`: the reader goes away before the output is written. The command ends
    quietly with a shell's SIGPIPE status, not with a BrokenPipeError traceback (it printed one before)."""
    from lab.cli import SIGPIPE_EXIT

    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the first write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "lab", "lora", "--model", "embedded", "--r", "16", "--json"],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == SIGPIPE_EXIT, proc.stderr
    assert proc.stderr == ""


def test_every_command_prints_its_help(capsys):
    from lab.cli import COMMANDS

    names = list(COMMANDS)
    assert {"info", "prepare"} <= set(names)
    for argv in [["--help"]] + [[name, "--help"] for name in names]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0, argv
    out = capsys.readouterr().out
    assert all(name in out for name in names)


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every `python -m lab ...` line in the README's and docs' code blocks (what a newcomer copies);
    templates (`<run>`, `[--limit N]`, `...`) are not commands."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
            for command in re.findall(r"^(?:\S*/)?python -m lab ((?:[^\n\\]|\\\n)+)", block, flags=re.M):
                line = command.replace("\\\n", " ").split(" #")[0].strip()
                if not re.search(r"[<\[]|\.\.\.|\bCOMMAND\b", line):
                    found.append((path.name, shlex.split(line)))
    return found


@pytest.mark.slow  # the train command's parser imports the training stack (~5 s)
def test_every_command_the_docs_show_parses(capsys):
    """A command copied from the README or docs/ runs: each parses with the real parser (docs/memory.md showed an
    `--inverse` flag that never existed)."""
    from lab.cli import build_parser

    commands = documented_commands()
    assert len(commands) >= 15 and {argv[0] for _, argv in commands} >= {"memory", "lora", "train", "load"}
    bad = []
    for name, argv in commands:
        parser, _ = build_parser(only=argv[0])
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            if e.code:
                error = capsys.readouterr().err.strip().splitlines()[-1]
                bad.append(f"{name}: python -m lab {' '.join(argv)}: {error}")
    assert not bad, "\n".join(bad)
