"""Public mode, table-driven: every field that names a model, adapter, dataset, output or run refuses
absolute paths, `..` and symlinks out of runs/; a Hub id over the parameter cap is refused from its
config alone (the Hub stubbed at the network boundary: hf_hub_download and model_info); a config
with 100,000 layers is refused before transformers builds it; oversized uploads are refused; a run
name with '/' is refused. Each with a message that says what to do, and nothing written outside runs/."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from lab import policy
from lab.cli import main as cli_main
from lab.data.datasets import save_upload
from lab.errors import LabError
from lab.models import public
from lab.models.catalog import CATALOG_DIR
from lab.tasks import bounded

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def world(tmp_path, monkeypatch):
    """runs/ (holding one real adapter run) next to an outside/ folder the inputs try to reach."""
    runs, outside = tmp_path / "runs", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    fake = outside / "adapter"
    fake.mkdir()
    (fake / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    runs.mkdir()
    (runs / "escape").symlink_to(outside)  # a symlink out of runs/
    (runs / "uploads").mkdir()
    (runs / "uploads" / "passwd.jsonl").symlink_to(outside / "secret.jsonl")
    monkeypatch.setenv("QLORA_LAB_RUNS", str(runs))
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    monkeypatch.delenv("QLORA_LAB_HUB_ALLOW", raising=False)
    monkeypatch.delenv("QLORA_LAB_MAX_PARAMS", raising=False)
    public._admitted.cache_clear()
    return tmp_path


def tree(root: Path) -> dict[str, int]:
    """Every file and folder under `root` (symlinks not followed) with its size: the filesystem check."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.lstat().st_size
    return out


def model(spec):
    from lab.models.sources import resolve_source

    return resolve_source(spec)


def adapter(src):
    from lab.generate.adapters import inspect_adapter

    return inspect_adapter(src)


def dataset(src):
    from lab.data.datasets import check_dataset

    return check_dataset(src, "train")


def output(out):
    """The run folder a training writes (`--output`; the runner resolves it through this)."""
    return policy.output_dir(out)


def run_name(name):
    return policy.check_run_name(name)


def run_lookup(name):
    """?run=<name> on the Training page, Stop/Delete, the playground's run adapters."""
    return policy.run_folder(name)


def report(path):
    return policy.output_file(path)


NO_PATHS = "accepts no server paths"
CASES = [
    # field, function, input (OUT = the outside folder), message
    ("model", model, "OUT", NO_PATHS),
    ("model", model, "../../etc", NO_PATHS),
    ("model", model, "~/.cache/qlora-lab/models/SmolLM2-135M-Instruct", NO_PATHS),
    ("model", model, "OUT/config.json", NO_PATHS),
    ("adapter", adapter, "OUT/adapter", "server path outside runs/"),
    ("adapter", adapter, "../outside/adapter", "contains '..'"),
    ("adapter", adapter, "escape/adapter", "points outside"),
    ("adapter", adapter, "someone/adapter-on-the-hub", "must be allow-listed"),
    ("dataset", dataset, "OUT/secret.jsonl", NO_PATHS),
    ("dataset", dataset, "../outside/secret.jsonl", NO_PATHS),
    ("dataset", dataset, "RUNS/uploads/passwd.jsonl", "points outside"),
    ("dataset", dataset, "RUNS/uploads/../../outside/secret.jsonl", NO_PATHS),
    ("dataset", dataset, "someone/dataset", "not allow-listed"),
    ("output", output, "OUT/run", "points outside"),
    ("output", output, "../outside/run", "contains '..'"),
    ("output", output, "escape", "points outside"),
    ("output", output, "RUNS/escape/run", "points outside"),
    ("run name", run_name, "team/run", "not allowed: use letters"),
    ("run name", run_name, "..", "not allowed"),
    ("run name", run_name, ".hidden", "no leading dot"),
    ("run name", run_name, "uploads", "reserved"),
    ("run lookup", run_lookup, "OUT", "points outside"),
    ("run lookup", run_lookup, "../outside", "contains '..'"),
    ("run lookup", run_lookup, "escape", "points outside"),
    ("report file", report, "OUT/report.md", "points outside"),
    ("report file", report, "../outside/report.md", "contains '..'"),
    ("report file", report, "escape/report.md", "points outside"),
]


@pytest.mark.parametrize("field,fn,value,message", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
def test_every_field_refuses_paths_out_of_runs(world, field, fn, value, message):
    value = value.replace("OUT", str(world / "outside")).replace("RUNS", str(world / "runs"))
    before = tree(world)
    with pytest.raises(LabError, match=message) as e:
        fn(value)
    assert len(str(e.value)) < 400 and "Traceback" not in str(e.value)
    assert tree(world) == before  # nothing written anywhere, runs/ included


def test_what_public_mode_does_accept(world):
    assert model("embedded").kind == "embedded" and model("llama-3.2-1b").kind == "catalog"
    assert dataset("style").rows
    assert policy.output_dir("my-run") == world / "runs" / "my-run"
    assert policy.run_folder("my-run/checkpoints") == world / "runs" / "my-run" / "checkpoints"
    up = save_upload("../../my data.jsonl", b'{"instruction": "q", "output": "a"}\n')
    assert up.parent.parent == world / "runs" / "uploads" and up.name == "my-data.jsonl"  # inside runs/, name cleaned
    assert len(dataset(str(up)).rows) == 1


def test_local_mode_keeps_its_freedom(world, monkeypatch):
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "0")
    assert len(dataset(str(world / "outside" / "secret.jsonl")).rows) == 1
    assert policy.output_dir(str(world / "outside" / "run")) == world / "outside" / "run"
    assert not policy.public_mode({"SPACE_ID": "me/lab", "QLORA_LAB_PUBLIC": "0"})
    assert policy.public_mode({"SPACE_ID": "me/lab"}) and policy.public_mode({"QLORA_LAB_PUBLIC": "1"})
    assert not policy.public_mode({})


# --------------------------------------------------------------------------- Hub ids and configs
@pytest.fixture
def hub(monkeypatch, world):
    """The Hub, stubbed at the network boundary: config.json files and file listings per repo."""
    import huggingface_hub

    configs: dict[str, Path] = {}
    listings: dict[str, list[tuple[str, int]]] = {}
    calls: list[str] = []

    def hf_hub_download(repo_id, filename, **kw):
        calls.append(f"download {repo_id}/{filename}")
        assert filename == "config.json", "only the config may be fetched before admission"
        if repo_id not in configs:
            raise OSError(f"{repo_id} is not on this stub Hub")
        return str(configs[repo_id])

    class Api:
        def model_info(self, repo_id, files_metadata=False, **kw):
            calls.append(f"listing {repo_id}")
            sib = [type("S", (), {"rfilename": f, "size": n})() for f, n in listings.get(repo_id, [])]
            return type("Info", (), {"siblings": sib})()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr("lab.models.hub.hub_reachable", lambda timeout=2.0: True)  # this stub Hub answers
    return configs, listings, calls


def test_a_hub_id_over_the_cap_is_refused_from_its_config_alone(hub, world, monkeypatch):
    configs, listings, calls = hub
    configs["meta-llama/Llama-3.1-70B"] = CATALOG_DIR / "Llama-3.1-70B.json"
    configs["Qwen/Qwen2.5-0.5B"] = CATALOG_DIR / "Qwen2.5-0.5B.json"
    before = tree(world)
    with pytest.raises(LabError, match=r"has 70\.55B parameters .* above this server's cap of 4\.00B") as e:
        model("meta-llama/Llama-3.1-70B")
    assert "QLORA_LAB_HUB_ALLOW" in str(e.value)
    assert calls == ["download meta-llama/Llama-3.1-70B/config.json"]  # refused before any weight was listed or fetched
    assert model("Qwen/Qwen2.5-0.5B").kind == "hub"  # under the cap: admitted
    monkeypatch.setenv("QLORA_LAB_MAX_PARAMS", "100M")
    with pytest.raises(LabError, match="above this server's cap of 100.00M"):
        model("Qwen/Qwen2.5-0.5B")
    monkeypatch.setenv("QLORA_LAB_HUB_ALLOW", "Qwen/*")  # the instructor's allow-list wins over the cap
    assert model("Qwen/Qwen2.5-0.5B").kind == "hub"
    assert tree(world) == before


def test_a_small_config_with_huge_weight_files_is_refused(hub):
    configs, listings, _ = hub
    configs["trick/small-config"] = CATALOG_DIR / "SmolLM2-135M.json"
    listings["trick/small-config"] = [("model.safetensors", 900_000_000_000)]
    with pytest.raises(LabError, match="lists 900.00 GB of weight files"):
        model("trick/small-config")


def test_a_config_with_100000_layers_is_refused_before_it_is_built(hub, world, monkeypatch):
    import lab.models.reader as A

    def must_not_build(*a, **k):
        raise AssertionError("the architecture was built")

    monkeypatch.setattr(A, "architecture_from_config", must_not_build)
    monkeypatch.setattr(public, "architecture_from_config", must_not_build)  # public mode builds through here
    data = json.loads((CATALOG_DIR / "Llama-3.2-1B.json").read_text())
    huge = json.dumps({**data, "num_hidden_layers": 100_000})
    with pytest.raises(LabError, match="declares num_hidden_layers=100,000, above the 1,024 layers"):
        A.read_architecture_json(huge, "config.json")  # an upload on the calculator pages
    nested = json.dumps({"model_type": "gemma3", "text_config": {**data, "num_hidden_layers": 100_000}})
    with pytest.raises(LabError, match="num_hidden_layers=100,000"):
        A.read_architecture_json(nested, "config.json")
    configs, _, _ = hub
    path = world / "outside" / "huge.json"
    path.write_text(huge)
    configs["evil/many-layers"] = path
    with pytest.raises(LabError, match="num_hidden_layers=100,000"):
        model("evil/many-layers")


def test_oversized_uploads_are_refused(world, monkeypatch):
    import lab.models.reader as A

    before = tree(world)
    with pytest.raises(LabError, match=r"is 21.00 MB, above this server's limit of 20.00 MB"):
        save_upload("big.jsonl", b"x" * 21_000_000)
    with pytest.raises(LabError, match="above the 512.00 KB a config.json may have"):
        A.read_architecture_json(b" " * 600_000 + b"{}", "config.json")
    monkeypatch.setenv("QLORA_LAB_MAX_UPLOAD_MB", "0.001")
    with pytest.raises(LabError, match="above this server's limit of 1.00 KB"):
        save_upload("small.csv", b"a,b\n" * 300)
    with pytest.raises(LabError, match="not a .jsonl, .json or .csv"):
        save_upload("run.sh", b"rm -rf /")
    assert tree(world) == before


def test_a_slow_config_read_answers_within_its_time_budget(world):
    import threading

    release = threading.Event()
    with pytest.raises(LabError, match="took longer than 0 s: refused"):
        bounded(lambda: release.wait(30), 0.2, "Reading config.json")
    release.set()


def test_nothing_passes_trust_remote_code():
    """The lab never runs a repository's own Python: no source file passes trust_remote_code (as a keyword
    argument or a kwargs key); only prose may name it."""
    import re

    passing = re.compile(r"trust_remote_code\s*=|[\"']trust_remote_code[\"']")
    files = [p for d in ("lab", "pages", "benchmarks", "tests") for p in (ROOT / d).rglob("*.py")] + [ROOT / "app.py"]
    assert len(files) > 40
    hits = [
        f"{p.relative_to(ROOT)}:{m.group()}"
        for p in files
        if p != Path(__file__)
        for m in passing.finditer(p.read_text())
    ]
    assert hits == []


# --------------------------------------------------------------------------- the CLI in public mode
CLI_CASES = [
    (["memory", "--model", "/etc"], NO_PATHS),
    (["lora", "--model", "OUT/config.json", "--r", "8"], NO_PATHS),
    (["compare", "--adapter", "OUT/adapter", "--prompt", "hi"], "server path outside runs/"),
    (["evaluate", "--dataset", "style", "--markdown", "OUT/report.md"], "points outside"),
    (["train", "--dataset", "OUT/secret.jsonl", "--max-steps", "1"], NO_PATHS),
    (["train", "--output", "OUT/run", "--max-steps", "1"], "points outside"),
]


@pytest.mark.slow
def test_the_cli_in_public_mode_refuses_paths_in_one_line(world, monkeypatch, capsys):
    """Each refusal through the CLI's own `main` in this process (its imports are paid once), and the last one
    through a real `python -m lab` process as well: what a person at a terminal sees, one line, exit 2."""
    env = {"QLORA_LAB_PUBLIC": "1", "QLORA_LAB_RUNS": str(world / "runs"), "HF_HUB_OFFLINE": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    before = tree(world)
    argvs = [[a.replace("OUT", str(world / "outside")) for a in args] for args, _ in CLI_CASES]
    proc = subprocess.Popen([sys.executable, "-m", "lab", *argvs[-1]], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for argv, (args, message) in zip(argvs, CLI_CASES, strict=True):
        code = cli_main(argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err, (args, err[-2000:])
        assert err.startswith("error: ") and err.count("\n") == 1, err
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and CLI_CASES[-1][1] in err, err[-2000:]
    assert err.startswith("error: ") and err.count("\n") == 1, err
    after = {k: v for k, v in tree(world).items() if not Path(k).name.startswith(".")}  # runs/.train.lock, .queue.lock
    assert after == before


def test_replace_is_not_a_way_around_the_run_folder_check(world):
    """A TrainConfig whose output is a run name trains into runs/<name>, never elsewhere."""
    from lab.training.config import default_config, run_dir_for

    src = model("embedded")
    assert run_dir_for(replace(default_config("cpu"), output="mine"), src) == world / "runs" / "mine"
    with pytest.raises(LabError, match="points outside"):
        run_dir_for(replace(default_config("cpu"), output=str(world / "outside" / "x")), src)
