"""Sharing a run: the model card huggingface_hub parses (metadata, loss curve, a load snippet that runs, the
evaluation), the merged export's own card, and `lab push` up to the network boundary (this machine has no Hub).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from lab.errors import LabError
from lab.publish.card import (
    CARD_FILE,
    CURVE_FILE,
    EVAL_FILE,
    base_origin,
    dataset_hub_id,
    folder_origin,
    write_run_card,
)
from lab.publish.curve import TRAIN_COLOR, draw_loss_curve
from lab.publish.push import files_to_upload
from lab.training.config import default_config
from lab.training.runner import merge_and_export, train
from lab.units import fmt_bytes

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "lab-tests/tiny-llama"  # what the tiny base "came from" (its lab_source.json says so)


@pytest.fixture(scope="module")
def hub_base(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as a local copy of a Hub model: lab_source.json names its Hub id, README.md its license."""
    base = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("bases") / "tiny-hub-base")
    (base / "lab_source.json").write_text(json.dumps({"name": "tiny", "hub_id": HUB_ID}))
    (base / "README.md").write_text("---\nlicense: mit\n---\n# tiny\n")
    return base


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, hub_base) -> Path:
    out = tmp_path_factory.mktemp("share") / "run"
    cfg = default_config("cpu", model=str(hub_base), dataset="style", max_steps=4, batch_size=2, max_length=64,
                         eval_steps=2, save_steps=2, learning_rate=5e-2, output=str(out))
    assert train(cfg)["status"] == "finished"
    return out


def code_block(markdown: str, language: str = "python") -> str:
    return re.search(rf"```{language}\n(.*?)```", markdown, re.S).group(1)


def run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<card snippet>", "exec"), {})
    return out.getvalue()


# --------------------------------------------------------------------------- the run's card
@pytest.mark.training
def test_card_metadata_parses_and_ours_is_the_card_left(trained_run, hub_base):
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained_run / CARD_FILE)
    assert card.data.to_dict() == {"base_model": HUB_ID, "library_name": "peft", "license": "mit",
                                   "pipeline_tag": "text-generation", "tags": ["lora", "trl", "sft"]}
    assert "## How to load" in card.text and f"![Training loss]({CURVE_FILE})" in card.text
    # TRL writes its own card into the checkpoints; peft wrote one into the run folder on save: ours replaced it.
    trl_card = ModelCard.load(trained_run / "checkpoints" / CARD_FILE)
    assert trl_card.data.to_dict().get("library_name") != "peft" and "## How to load" not in trl_card.text

    record = json.loads((trained_run / "lab_run.json").read_text())
    assert fmt_bytes(record["summary"]["peak_memory_bytes"]) in card.text
    assert f"Train loss {record['log_history'][0]['loss']:.4f} at step 1" in card.text
    # The adapter travels: peft's config names the Hub base; this machine's path stays in lab_run.json.
    assert json.loads((trained_run / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert record["base_model"]["pretrained_id"] == str(hub_base)


@pytest.mark.training
def test_loss_curve_is_a_png_that_goes_down_when_the_loss_does(trained_run, tmp_path):
    from PIL import Image

    with Image.open(trained_run / CURVE_FILE) as img:
        assert img.format == "PNG" and img.size == (720, 360)
    falling = draw_loss_curve(tmp_path / "falling.png", [(s, 3.0 - 0.05 * s) for s in range(1, 41)])
    with Image.open(falling) as img:
        rgb = img.convert("RGB")
        rows = [y for x in range(img.width) for y in range(img.height) if rgb.getpixel((x, y)) == TRAIN_COLOR]
        cols = [x for x in range(img.width) for y in range(img.height) if rgb.getpixel((x, y)) == TRAIN_COLOR]
    left = [y for x, y in zip(cols, rows, strict=True) if x < img.width / 3]
    right = [y for x, y in zip(cols, rows, strict=True) if x > 2 * img.width / 3]
    assert left and right and sum(left) / len(left) < sum(right) / len(right)  # lower loss = lower on the image


@pytest.mark.training
def test_load_snippet_runs_and_answers_like_peft(trained_run, hub_base):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    code = code_block((trained_run / CARD_FILE).read_text())
    assert f"base_id = {HUB_ID!r}" in code and f"adapter_id = {str(trained_run)!r}" in code
    printed = run_snippet(code.replace(HUB_ID, str(hub_base)))  # this machine has no Hub: the local copy

    tok = AutoTokenizer.from_pretrained(trained_run)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hub_base), str(trained_run))
    messages = eval(re.search(r"messages = (.*)", code).group(1))  # the dataset's first test row, as in the card
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=64, do_sample=False)
    assert printed.strip() == tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.training
def test_merged_export_has_its_own_card(trained_run, hub_base):
    from huggingface_hub import ModelCard

    merged = merge_and_export(trained_run)
    card = ModelCard.load(merged / CARD_FILE)
    data = card.data.to_dict()
    assert data["base_model"] == HUB_ID and data["library_name"] == "transformers" and "merged" in data["tags"]
    assert (merged / CURVE_FILE).is_file() and "merge_and_unload" in card.text
    code = code_block(card.text)
    assert "peft" not in code and f"model_id = {str(merged)!r}" in code
    adapter_code = code_block((trained_run / CARD_FILE).read_text()).replace(HUB_ID, str(hub_base))
    assert run_snippet(code) == run_snippet(adapter_code)  # merged = base + adapter: the same greedy answer


# --------------------------------------------------------------------------- evaluation on the card
@pytest.mark.training
def test_evaluation_is_recorded_in_the_run_and_its_card(trained_run, hub_base, tmp_path):
    from lab.generate.adapters import inspect_adapter
    from lab.generate.evaluate import EvalSettings, evaluate, load_examples
    from lab.models.loading import load_model

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("merged", "checkpoints"))
    info = inspect_adapter(str(run))
    examples = load_examples("style", 2)
    settings = EvalSettings(limit=2, max_new_tokens=4)

    cancelled = threading.Event()
    cancelled.set()
    evaluate(load_model(str(hub_base)), [info], examples, "style", settings, cancel=cancelled)
    assert not (run / EVAL_FILE).exists()  # an incomplete evaluation is not the adapter's result

    other = shutil.copytree(hub_base, tmp_path / "another-base", ignore=shutil.ignore_patterns("lab_source.json"))
    evaluate(load_model(str(other)), [info], examples, "style", settings)
    assert not (run / EVAL_FILE).exists()  # evaluated on another base than its own: not recorded

    result = evaluate(load_model(str(hub_base)), [info], examples, "style", settings)
    entry = json.loads((run / EVAL_FILE).read_text())
    assert entry["adapter"] == result.metrics()[info.name] and entry["base"] == result.metrics()["base"]
    assert entry["examples"] == 2 and entry["dataset"] == "style" and entry["metric"] == result.metric
    text = (run / CARD_FILE).read_text()
    assert "## Evaluation" in text and f"| this adapter | {entry['adapter']['loss']:.3f} |" in text


@pytest.mark.training
def test_a_run_record_written_by_hand_still_gets_a_card(trained_run, tmp_path):
    """A lab_run.json with only a name and the base's spec (a script's adapter, an older run) gives a card, not a
    KeyError: an evaluation that just finished must never be lost to its record."""
    run = shutil.copytree(trained_run, tmp_path / "by-hand", ignore=shutil.ignore_patterns("merged", "checkpoints"))
    (run / "lab_run.json").write_text(json.dumps({"name": "by-hand", "base_model": {"spec": "embedded"}}))
    text = write_run_card(run).read_text()
    assert "by-hand" in text and "'embedded'" in text and "No loss was logged." in text


# --------------------------------------------------------------------------- where bases come from
def test_base_origin_is_a_hub_id_or_nothing(tmp_path, embedded_dir):
    named = tmp_path / "named"
    named.mkdir()
    (named / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}))
    assert folder_origin(named).hub_id == "Qwen/Qwen2.5-0.5B-Instruct"
    cached = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-360M" / "snapshots" / "abc123"
    cached.mkdir(parents=True)
    assert folder_origin(cached).hub_id == "HuggingFaceTB/SmolLM2-360M"
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"_name_or_path": "Smollm2 135M 8k Lc100K Mix1 Ep2"}))  # a GGUF's
    assert folder_origin(odd).hub_id is None
    assert folder_origin(tmp_path / "named").hub_id != str(tmp_path / "named")

    embedded = base_origin({"kind": "embedded", "spec": "embedded", "pretrained_id": str(embedded_dir)})
    assert embedded.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and embedded.license == "apache-2.0"
    assert "GGUF" in embedded.note
    assert base_origin({"kind": "folder", "pretrained_id": str(tmp_path / "gone")}).hub_id is None
    assert dataset_hub_id({"dataset": {"source": "someone/their-dataset"}}) == "someone/their-dataset"
    assert dataset_hub_id({"dataset": {"source": "style"}}) is None
    (tmp_path / "data.jsonl").write_text("{}\n")
    assert dataset_hub_id({"dataset": {"source": str(tmp_path / "data.jsonl")}}) is None


# --------------------------------------------------------------------------- push, up to the network boundary
def test_files_to_upload_leave_training_state_behind(tmp_path):
    run = tmp_path / "run"
    for f in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "README.md", "loss.png", "lab_run.json", "evaluation.json",
              "events.jsonl", "process.log", "STOP", "hub.json", "command.txt", "README.md.tmp", "lab_run.json.tmp",
              "checkpoints/checkpoint-2/adapter_model.safetensors", "checkpoints/checkpoint-2/optimizer.pt",
              "checkpoints/README.md", "merged/model.safetensors", ".train.lock", "training_args.bin"):
        (run / f).parent.mkdir(parents=True, exist_ok=True)
        (run / f).write_text("x")
    assert files_to_upload(run) == sorted(["README.md", "adapter_config.json", "adapter_model.safetensors",
                                           "chat_template.jinja", "evaluation.json", "lab_run.json", "loss.png",
                                           "tokenizer.json", "tokenizer_config.json"])


class _Refuse(BaseHTTPRequestHandler):
    status = 401

    def _answer(self):
        body = json.dumps({"error": "refused by the test server"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def fake_hub(status: int):
    handler = type("Handler", (_Refuse,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def push(capsys, *args) -> tuple[int, str]:
    from lab.cli import main

    rc = main(["push", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.mark.training
def test_push_stops_with_one_line_messages(trained_run, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns("merged", "checkpoints"))
    card_before = write_run_card(run).read_text()  # the copy's card names the copy
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-login" / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)

    cases = [
        (("--repo", "not a repo"), "is not owner/name"),
        (("--repo", "me/bad name!"), "is not valid on the Hub"),
        (("--repo", "me/x", "--merged"), "has no merged export"),
        (("--repo", "me/x"), "Not logged in"),
    ]
    for args, words in cases:
        rc, err = push(capsys, str(run), *args)
        assert rc == 2 and err.startswith("error: ") and words in err and len(err.splitlines()) == 1, (args, err)
    rc, err = push(capsys, str(tmp_path / "nowhere"), "--repo", "me/x")
    assert rc == 2 and "No run folder" in err

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert push(capsys, str(run), "--repo", "me/x") == (2, "error: Cannot push: offline mode is on (HF_HUB_OFFLINE=1). "
                                                           "Unset HF_HUB_OFFLINE on a machine with network access.")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for status, words in ((401, "refused the token (401 unauthorised)"), (403, "No write access to me/x (403")):
        with fake_hub(status) as url:
            monkeypatch.setattr(constants, "ENDPOINT", url)
            rc, err = push(capsys, str(run), "--repo", "me/x")
        assert rc == 2 and words in err and len(err.splitlines()) == 1, err
    assert (run / CARD_FILE).read_text() == card_before  # a failed push leaves the card naming the local folder
    assert not (run / "hub.json").exists()


@pytest.mark.training
def test_push_offline_when_the_endpoint_does_not_answer(trained_run, tmp_path):
    """The real boundary, as a user meets it: HF_ENDPOINT on a closed port, a token set, the CLI in its own process."""
    import os
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    p = subprocess.run([sys.executable, "-m", "lab", "push", str(trained_run), "--repo", "me/x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith(f"error: Cannot reach the Hub at http://127.0.0.1:{port} (offline?")


def test_push_refuses_a_folder_without_an_adapter(tmp_path):
    from lab.publish.push import push_run

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "lab_run.json").write_text("{}")
    with pytest.raises(LabError, match="has no adapter"):
        push_run(tmp_path / "r", "me/x")


def test_a_public_server_never_pushes_with_its_own_token(monkeypatch):
    """On a public Space a visitor's push must use the visitor's token: the server's HF_TOKEN would let
    anyone write to the Space owner's account."""
    from lab.publish.push import hub_token

    monkeypatch.setenv("HF_TOKEN", "hf_server_secret")
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "1")
    with pytest.raises(LabError, match="your own Hugging Face token"):
        hub_token(None)
    assert hub_token(" hf_visitor ") == "hf_visitor"
    monkeypatch.setenv("QLORA_LAB_PUBLIC", "0")
    assert hub_token(None) == "hf_server_secret"  # a laptop: the login or HF_TOKEN, as before
