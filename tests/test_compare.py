# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""Side-by-side generation: the base column is really the base, adapter columns equal plain peft,
one batched generate streams every column, and bad input gets a clear message."""

from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from lab.data.prompts import build_chat_prompt
from lab.environment import device_type
from lab.errors import LabError
from lab.generate.adapters import base_mismatch, discover_runs, inspect_adapter
from lab.generate.bank import LOCAL, adapter_bank
from lab.generate.compare import BASE_COLUMN, SamplingSettings, side_by_side
from lab.models.loading import load_model
from tests.fixtures_playground import (  # noqa: F401
    make_adapter,
    other_base_adapter,
    row_lora_logits,
    tiny_adapters,
)

PROMPT = [{"role": "user", "content": "Name three colours of the rainbow."}]
N = 16


@pytest.fixture
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), "fp32")


def reference(model_dir, messages, adapter=None, n=N):
    """Plain transformers (or plain peft) greedy output on this machine's device: only the prompt text
    comes from the lab (its one prompt builder; the tokenizer's chat template here)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device_type()).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(build_chat_prompt(tok, messages), return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id
        )
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_greedy_columns_equal_plain_transformers_and_peft(loaded, tiny_model_dir, tiny_adapters):
    infos = [inspect_adapter(str(tiny_adapters["alpha"])), inspect_adapter(str(tiny_adapters["beta"]))]
    r = side_by_side(loaded, infos, PROMPT, SamplingSettings(max_new_tokens=N))
    base, alpha, beta = (r.columns[n].text for n in (BASE_COLUMN, "alpha", "beta"))
    assert base == reference(tiny_model_dir, PROMPT)
    assert alpha == reference(tiny_model_dir, PROMPT, tiny_adapters["alpha"])
    assert beta == reference(tiny_model_dir, PROMPT, tiny_adapters["beta"])
    # The adapters really change the output, so equality above proves the base column ran without them.
    assert len({base, alpha, beta}) == 3
    assert all(c.tokens > 0 and c.seconds > 0 and c.tokens_per_s > 0 for c in r.columns.values())
    assert not r.notes and all(c.batched for c in r.columns.values())
    # The shared registry model is the plain base again for everyone else.
    assert adapter_bank(loaded).peft_model is not None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(build_chat_prompt(tok, PROMPT), return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    out = loaded.model.generate(**ids, max_new_tokens=N, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) == base


def test_chat_mode_columns_keep_their_own_history(loaded, tiny_model_dir, tiny_adapters):
    """Different conversation lengths per column: left padding must not change any column's answer."""
    alpha = inspect_adapter(str(tiny_adapters["alpha"]))
    convs = {
        BASE_COLUMN: PROMPT,
        "alpha": [*PROMPT, {"role": "assistant", "content": "Red, green and blue, and a much longer reply."},
                  {"role": "user", "content": "And two more?"}],
    }
    r = side_by_side(loaded, [alpha], convs, SamplingSettings(max_new_tokens=N))
    assert r.columns[BASE_COLUMN].text == reference(tiny_model_dir, convs[BASE_COLUMN])
    assert r.columns["alpha"].text == reference(tiny_model_dir, convs["alpha"], tiny_adapters["alpha"])
    assert "And two more?" in r.prompts["alpha"] and "And two more?" not in r.prompts[BASE_COLUMN]


@pytest.mark.slow
def test_dora_falls_back_to_one_after_another(loaded, tiny_model_dir, tiny_adapters):
    infos = [inspect_adapter(str(tiny_adapters["alpha"])), inspect_adapter(str(tiny_adapters["dora"]))]
    assert infos[1].use_dora
    r = side_by_side(loaded, infos, PROMPT, SamplingSettings(max_new_tokens=N))
    assert r.columns["dora"].batched is False and r.columns["alpha"].batched
    assert any("DoRA" in n and "dora" in n for n in r.notes)
    assert r.columns["dora"].text == reference(tiny_model_dir, PROMPT, tiny_adapters["dora"])
    assert r.columns["alpha"].text == reference(tiny_model_dir, PROMPT, tiny_adapters["alpha"])
    assert r.columns[BASE_COLUMN].text == reference(tiny_model_dir, PROMPT)
    assert r.columns["dora"].text != r.columns[BASE_COLUMN].text


def test_columns_stream_at_the_same_time(loaded, tiny_adapters):
    snaps = []
    info = inspect_adapter(str(tiny_adapters["alpha"]))
    r = side_by_side(loaded, [info], PROMPT, SamplingSettings(max_new_tokens=N), on_update=snaps.append)
    assert len(snaps) >= N
    # Midway, both columns have some tokens and neither is finished: they grow together.
    mid = snaps[N // 2]
    assert all(0 < c["tokens"] < N and not c["done"] for c in mid.values())
    assert snaps[-1][BASE_COLUMN]["text"] == r.columns[BASE_COLUMN].text
    assert [s["alpha"]["tokens"] for s in snaps[:N]] == list(range(1, N + 1))


def test_sampling_is_repeatable_with_a_seed(loaded, tiny_adapters):
    info = inspect_adapter(str(tiny_adapters["alpha"]))
    s = SamplingSettings(max_new_tokens=8, temperature=1.5, top_p=0.9, seed=7)
    a = side_by_side(loaded, [info], PROMPT, s)
    b = side_by_side(loaded, [info], PROMPT, s)
    assert {n: c.text for n, c in a.columns.items()} == {n: c.text for n, c in b.columns.items()}


def test_cancel_stops_generation(loaded, tiny_adapters):
    cancel = threading.Event()
    cancel.set()
    r = side_by_side(loaded, [], PROMPT, SamplingSettings(max_new_tokens=N), cancel=cancel)
    assert r.columns[BASE_COLUMN].tokens <= 1


# ---------------------------------------------------------------------------- bad input
def test_missing_and_corrupt_adapters_are_clear(tmp_path, tiny_adapters):
    with pytest.raises(LabError, match="does not exist"):
        inspect_adapter(str(tmp_path / "nope"))
    with pytest.raises(LabError, match="could not be fetched from the Hub"):  # offline in tests
        inspect_adapter("someone/some-adapter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabError, match="adapter_config.json"):
        inspect_adapter(str(tmp_path / "empty"))
    broken = shutil.copytree(tiny_adapters["alpha"], tmp_path / "broken-json")
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(LabError, match="not valid JSON"):
        inspect_adapter(str(broken))
    truncated = shutil.copytree(tiny_adapters["alpha"], tmp_path / "truncated")
    w = truncated / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(LabError, match="corrupt or truncated"):
        inspect_adapter(str(truncated))
    no_weights = shutil.copytree(tiny_adapters["alpha"], tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(LabError, match="no weights"):
        inspect_adapter(str(no_weights))


def test_adapter_for_another_base_is_refused_and_base_untouched(loaded, tiny_model_dir, other_base_adapter):
    info = inspect_adapter(str(other_base_adapter))
    assert base_mismatch(info, loaded.source) is not None  # trained on another folder: warned
    with pytest.raises(LabError, match="does not fit this base"):
        side_by_side(loaded, [info], PROMPT, SamplingSettings(max_new_tokens=4))
    assert adapter_bank(loaded).peft_model is None  # no LoRA layer was injected
    r = side_by_side(loaded, [], PROMPT, SamplingSettings(max_new_tokens=N))
    assert r.columns[BASE_COLUMN].text == reference(tiny_model_dir, PROMPT)


def test_base_mismatch_warning_names_both(loaded, tiny_adapters, tmp_path):
    info = inspect_adapter(str(tiny_adapters["alpha"]))
    assert base_mismatch(info, loaded.source) is None  # trained on this very folder
    info.run = {"base_model": {"spec": "embedded", "display_name": "SmolLM2-135M-Instruct"}}
    info.config = {**info.config, "base_model_name_or_path": "/somewhere/SmolLM2-135M-Instruct"}
    warning = base_mismatch(info, loaded.source)
    assert "SmolLM2-135M-Instruct" in warning and loaded.source.display_name in warning


def test_a_tokenizer_without_chat_template_is_prompted_as_training_prompts(loaded):
    """One prompt builder: the playground frames a template-less tokenizer's prompt in the Alpaca template,
    exactly as training formats its data (not as plain text)."""
    from lab.data.datasets import render_example
    from lab.data.prompts import ALPACA_HEADER

    loaded.tokenizer.chat_template = None  # this test's own copy (the fixture loads afresh)
    training_prompt, _ = render_example(loaded.tokenizer, {"instruction": PROMPT[0]["content"], "output": "red"})
    r = side_by_side(loaded, [], PROMPT, SamplingSettings(max_new_tokens=2))
    assert r.prompts[BASE_COLUMN] == training_prompt
    assert training_prompt.startswith(ALPACA_HEADER) and PROMPT[0]["content"] in training_prompt


def test_empty_and_too_long_prompts(loaded):
    with pytest.raises(LabError, match="empty"):
        side_by_side(loaded, [], [{"role": "user", "content": "   "}])
    with pytest.raises(LabError, match="exceeds the model's context of 512"):
        side_by_side(loaded, [], [{"role": "user", "content": "word " * 600}], SamplingSettings(max_new_tokens=8))
    with pytest.raises(LabError, match="Temperature"):
        SamplingSettings(temperature=-1).validate()


def test_runs_are_discovered_with_their_record(tmp_path, tiny_model_dir, monkeypatch):
    runs = tmp_path / "runs"
    monkeypatch.setenv("QLORA_LAB_RUNS", str(runs))
    record = {"name": "banking r8", "base_model": {"spec": "embedded", "display_name": "SmolLM2-135M-Instruct"},
              "precision": "nf4", "dataset": {"name": "banking"}}
    make_adapter(tiny_model_dir, runs / "run-1", seed=5, run=record)
    (runs / "half-written").mkdir()
    (runs / "half-written" / "adapter_config.json").write_text("{}")
    found = discover_runs()
    assert [i.name for i in found] == ["banking_r8"]
    assert found[0].kind == "run" and found[0].dataset == "banking" and "nf4" in found[0].describe()


def test_cli_compare_json(tiny_model_dir, tiny_adapters, capsys):
    from lab.cli import main

    rc = main(["compare", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapters["alpha"]),
               "--prompt", PROMPT[0]["content"], "--max-new-tokens", str(N), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["base"]) >= {"text", "tokens", "seconds"} and list(r["adapters"]) == ["alpha"]
    assert r["base"]["text"] == reference(tiny_model_dir, PROMPT)
    assert r["adapters"]["alpha"]["text"] == reference(tiny_model_dir, PROMPT, tiny_adapters["alpha"])
    rc = main(["compare", "--model", str(tiny_model_dir), "--adapter", "/no/such/adapter", "--prompt", "hi"])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


@pytest.mark.embedded
def test_embedded_end_to_end(embedded_dir, tmp_path):
    """The real SmolLM2: base column = plain transformers, adapter column = plain peft, and they differ."""
    adapter = make_adapter(embedded_dir, tmp_path / "embedded-adapter", seed=6, std=0.05)
    loaded = load_model("embedded", "fp32")
    info = inspect_adapter(str(adapter))
    assert base_mismatch(info, loaded.source) is None  # trained on the embedded folder: same base
    r = side_by_side(loaded, [info], PROMPT, SamplingSettings(max_new_tokens=8))
    base_text, adapter_text = r.columns[BASE_COLUMN].text, r.columns[info.name].text
    assert base_text == reference(embedded_dir, PROMPT, n=8)
    assert adapter_text == reference(embedded_dir, PROMPT, adapter, n=8)
    assert base_text != adapter_text


# ---------------------------------------------------------------------------- row-wise LoRA (lab.generate.mixed_lora)
def test_plain_lora_adapters_take_the_row_wise_route(loaded, tiny_adapters):
    """The equality tests above hold on the fast path, not on peft's mixed batches by accident."""
    infos = [inspect_adapter(str(tiny_adapters[n])) for n in ("alpha", "beta")]
    r = side_by_side(loaded, infos, PROMPT, SamplingSettings(max_new_tokens=2))
    assert r.route == "row-lora"
    assert side_by_side(loaded, [], PROMPT, SamplingSettings(max_new_tokens=2)).route == "plain"


@pytest.mark.slow
def test_several_adapters_with_left_padding_equal_plain_peft(loaded, tiny_model_dir, tiny_adapters, tmp_path):
    """Four columns of different prompt lengths (left padding), adapters of different ranks, a scaling that is
    not a power of two, and an adapter that leaves most layers alone: each column equals its own plain run."""
    gamma = make_adapter(tiny_model_dir, tmp_path / "gamma", seed=8, r=8, alpha=12, targets=("k_proj", "up_proj"))
    paths = {"alpha": tiny_adapters["alpha"], "beta": tiny_adapters["beta"], "gamma": gamma}
    infos = [inspect_adapter(str(p)) for p in paths.values()]
    convs = {
        BASE_COLUMN: PROMPT,
        "alpha": [{"role": "user", "content": "Hi."}],
        "beta": [*PROMPT, {"role": "assistant", "content": "Red, green and blue."},
                 {"role": "user", "content": "And which colour is missing from that list, in your opinion?"}],
        "gamma": [{"role": "user", "content": "Count to five, slowly, one number per line."}],
    }
    r = side_by_side(loaded, infos, convs, SamplingSettings(max_new_tokens=N))
    assert r.route == "row-lora"
    assert len({len(r.prompts[n]) for n in convs}) == 4  # really different lengths: the batch is left-padded
    assert r.columns[BASE_COLUMN].text == reference(tiny_model_dir, convs[BASE_COLUMN])
    for name, path in paths.items():
        assert r.columns[name].text == reference(tiny_model_dir, convs[name], path), name


def test_dora_next_to_plain_lora_keeps_the_row_wise_batch(loaded, tiny_adapters):
    infos = [inspect_adapter(str(tiny_adapters["alpha"])), inspect_adapter(str(tiny_adapters["dora"]))]
    r = side_by_side(loaded, infos, PROMPT, SamplingSettings(max_new_tokens=2))
    assert r.route == "row-lora" and r.columns["dora"].batched is False


@pytest.mark.slow
def test_lora_on_embeddings_falls_back_to_peft_mixed_batches(loaded, tiny_model_dir, tiny_adapters, tmp_path):
    emb = make_adapter(
        tiny_model_dir, tmp_path / "emb", seed=9, std=2.0, targets=("embed_tokens", "q_proj", "down_proj")
    )
    infos = [inspect_adapter(str(tiny_adapters["alpha"])), inspect_adapter(str(emb))]
    r = side_by_side(loaded, infos, PROMPT, SamplingSettings(max_new_tokens=N))
    assert r.route == "peft-mixed"
    assert r.columns["emb"].text == reference(tiny_model_dir, PROMPT, emb)
    assert r.columns["alpha"].text == reference(tiny_model_dir, PROMPT, tiny_adapters["alpha"])
    assert r.columns[BASE_COLUMN].text == reference(tiny_model_dir, PROMPT)
    assert r.columns["emb"].text != r.columns[BASE_COLUMN].text


def test_row_lora_logits_match_peft_and_leave_other_threads_on_the_base(loaded, tiny_adapters):
    """One forward pass: the base row is bit-for-bit the plain base batch, the adapter row matches peft's own
    adapter forward, and a forward from another thread inside the block sees the plain base model."""
    info = inspect_adapter(str(tiny_adapters["alpha"]))
    bank = adapter_bank(loaded)
    r = row_lora_logits(loaded, bank, bank.use(LOCAL, [info])["alpha"])  # the bank's peft name for it
    base, adapted, mixed = r["base"], r["adapted"], r["mixed"]
    assert torch.equal(mixed[0], base[0])
    torch.testing.assert_close(mixed[1], adapted[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(adapted[1], base[1], atol=1e-3)  # the adapter really changes row 1
    assert torch.equal(r["other"], base) and torch.equal(r["after"], base)


def test_small_batch_linear_matches_f_linear_only_in_its_thread_and_undoes_itself(loaded):
    """(W @ xᵀ)ᵀ for decoding steps: the same logits as F.linear within float32 rounding, the same greedy tokens,
    prefill-sized inputs untouched, other threads on F.linear, and every layer's own forward back afterwards."""
    from lab.generate.small_batch import small_batch_linear

    model = loaded.model
    ids = torch.tensor([[1, 5, 9, 200, 31, 7], [1, 42, 17, 3, 99, 8]])
    step = ids[:, -1:]  # one token per row: a decoding step's shape
    with torch.inference_mode():
        plain_step, plain_prefill = model(input_ids=step).logits, model(input_ids=ids).logits
        other: list[torch.Tensor] = []
        with small_batch_linear(model, min_weight=0) as swapped:  # every float Linear of the tiny model
            fast_step, fast_prefill = model(input_ids=step).logits, model(input_ids=ids).logits
            t = threading.Thread(target=lambda: other.append(model(input_ids=step).logits))
            t.start()
            t.join()
        after = model(input_ids=step).logits
    assert swapped > 0 and not any("forward" in vars(m) for m in model.modules())
    torch.testing.assert_close(fast_step, plain_step, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast_prefill, plain_prefill)  # 12 rows > MAX_ROWS: F.linear as always
    assert torch.equal(other[0], plain_step) and torch.equal(after, plain_step)
    assert torch.equal(fast_step.argmax(-1), plain_step.argmax(-1))
