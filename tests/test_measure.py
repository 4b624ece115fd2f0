"""The loading lab's library: true bytes equal an independent count, predictions agree, bad input is clear.

Most tests use the tiny random Llama (loads in well under a second at any precision); one
end-to-end test loads the embedded SmolLM2 at bf16, int8 and nf4 (benchmarks/bench_loading.py
does all seven), and one runs `python -m lab load` on the tiny model.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from lab.environment import compute_dtype, device_type
from lab.errors import LabError
from lab.inspect.load_report import check_fits, check_supported, measure_load, run_loading_lab
from lab.inspect.quality import QualityConfig, perplexity
from lab.inspect.quantization import (
    layer_errors,
    level_tables,
    linear_weight_names,
    load_float_weight,
    quantization_error,
    weight_histogram,
)
from lab.models.loading import free_memory, load_model
from lab.models.measure import MemorySnapshot, measure_model
from lab.models.precision import PRECISIONS

ROOT = Path(__file__).resolve().parent.parent
NO_QUALITY = QualityConfig(perplexity_tokens=0, prompts=())


def independent_count(model) -> int:
    """Bytes by another route: the model's own state_dict (what save_pretrained writes), each storage
    once, plus what a state_dict leaves out — non-persistent buffers and the double-quant offset,
    which bitsandbytes serializes as a float inside its packed metadata rather than as a tensor."""
    from bitsandbytes.utils import unpack_tensor_to_dict

    sd = model.state_dict()
    seen, total = set(), 0
    for key, t in sd.items():
        if key.endswith("weight_format"):  # a serialization flag bitsandbytes adds, not held by the module
            continue
        if ".quant_state.bitsandbytes__" in key:
            meta = unpack_tensor_to_dict(t)
            total += 4 if "nested_offset" in meta else 0  # fp32 scalar tensor in memory
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if ident not in seen:
            seen.add(ident)
            total += t.numel() * t.element_size()
    for name, b in model.named_buffers():
        if name not in sd:
            total += b.numel() * b.element_size()
    return total


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_measured_bytes_equal_independent_count_and_prediction(tiny_model_dir, precision):
    loaded = load_model(str(tiny_model_dir), precision)
    fp = measure_model(loaded.model)
    assert fp.total_bytes == independent_count(loaded.model)
    # The tied lm_head / embedding is one storage: counted once, and reported as shared.
    emb = loaded.model.get_input_embeddings().weight
    assert fp.shared_bytes >= emb.numel() * emb.element_size()
    assert fp.hf_footprint_bytes == loaded.model.get_memory_footprint()
    if PRECISIONS[precision].quantized:
        assert fp.total_bytes > fp.hf_footprint_bytes  # constants get_memory_footprint does not see
        assert fp.by_kind.get("absmax", 0) + fp.by_kind.get("int8_row_scales", 0) > 0
    else:
        assert fp.total_bytes == fp.hf_footprint_bytes

    from lab.inspect.load_report import predict

    estimate = predict(loaded.source, precision, "compute", loaded.device)
    assert abs(estimate.weights_bytes - fp.total_bytes) / fp.total_bytes <= 0.01


def test_quant_state_pieces_are_counted(tiny_model_dir):
    """nf4-dq: nested absmax, the 256-entry nested code and the offset are all in the count."""
    model = load_model(str(tiny_model_dir), "nf4-dq").model
    fp = measure_model(model)
    n_layers = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert fp.by_kind["nested_quant_map"] == n_layers * 256 * 4
    assert fp.by_kind["nested_offset"] == n_layers * 4
    assert fp.by_kind["quant_map"] == n_layers * 16 * 4
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.quant_state.absmax.dtype == torch.uint8  # double-quantized absmax: one byte per block
    assert fp.by_kind["absmax"] == sum(m.weight.quant_state.absmax.numel() for m in model.modules()
                                       if type(m).__name__ == "Linear4bit")


def test_int8_row_scales_found_before_and_after_forward(tiny_model_dir):
    """bnb keeps SCB on weight.SCB after loading and moves it to module.state.SCB on the first forward."""
    loaded = load_model(str(tiny_model_dir), "int8")
    model = loaded.model
    before = measure_model(model)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.weight.SCB is not None and layer.state.SCB is None
    with torch.inference_mode():
        model(**loaded.tokenizer("a lighthouse", return_tensors="pt").to(model.device))
    assert layer.weight.SCB is None and layer.state.SCB is not None
    after = measure_model(model)
    assert after.by_kind["int8_row_scales"] == before.by_kind["int8_row_scales"]
    rows = sum(m.out_features for m in model.modules() if type(m).__name__ == "Linear8bitLt")
    assert before.by_kind["int8_row_scales"] == rows * 4


def test_dedup_counts_a_shared_storage_once():
    lin = torch.nn.Linear(8, 8, bias=False)
    model = torch.nn.Sequential(lin, torch.nn.Linear(8, 8, bias=False))
    model[1].weight = lin.weight  # tied
    model.register_buffer("view", lin.weight.data[:2])  # a view into the same storage
    fp = measure_model(model)
    assert fp.total_bytes == 8 * 8 * 4
    assert fp.shared_bytes == 8 * 8 * 4 + 2 * 8 * 4


def test_measure_load_report_and_memory_handed_back(tiny_model_dir, monkeypatch):
    import weakref

    import lab.inspect.load_report as load_report

    tensors = []  # weak references to every tensor the loaded model holds

    def load_and_watch(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        tensors.extend(weakref.ref(t) for t in [*loaded.model.parameters(), *loaded.model.buffers()])
        return loaded

    monkeypatch.setattr(load_report, "load_model", load_and_watch)
    r = measure_load(
        str(tiny_model_dir),
        "nf4",
        quality=QualityConfig(perplexity_tokens=64, window=32, prompts=("Hi",), max_new_tokens=4),
    )
    assert r.linear_class == "Linear4bit" and r.device == device_type()
    assert r.dtype == str(compute_dtype(r.device)).removeprefix("torch.")  # what stays unquantized: the compute dtype
    assert r.linear_classes == {"Linear4bit": 14, "Linear": 1}
    assert abs(r.error_pct) <= 1.0
    assert r.perplexity > 1 and r.perplexity_tokens == 62
    assert r.perplexity_tokens_read == 64 and r.perplexity_windows == 2  # 64 read in 2 windows of 32: 31 + 31 predicted
    assert len(r.answers) == 1 and r.answers[0]["prompt"] == "Hi"
    # Memory handed back: once measure_load returns, not one of the model's tensors is alive any more
    # (RSS figures alone cannot show it: the allocator keeps freed pages as it likes).
    assert tensors and all(ref() is None for ref in tensors)
    assert r.memory["rss_bytes"] is not None and isinstance(r.freed["rss_bytes"], int)
    whys = {g["class"]: g["why"] for g in r.unquantized}
    assert "lm_head" in whys["Linear"] and "only replaces nn.Linear" in whys["LlamaRMSNorm"]
    assert "Linear4bit(in_features=64" in r.tree
    if r.predicted_after_forward_bytes:
        assert (
            abs(r.predicted_after_forward_bytes - r.measured_after_forward_bytes) / r.measured_after_forward_bytes
            <= 0.01
        )


def test_perplexity_is_the_exp_of_the_mean_nll(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), "fp32")
    text = "The keeper trimmed the wick and wound the clock before sunset."
    res = perplexity(loaded.model, loaded.tokenizer, text=text, max_tokens=0, window=512)
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded.model.device)
    with torch.inference_mode():
        loss = loaded.model(input_ids=ids, labels=ids).loss.item()  # transformers' own shifted mean NLL
    assert res.tokens == ids.shape[1] - 1 and res.read == ids.shape[1] and res.windows == 1
    assert math.isclose(res.perplexity, math.exp(loss), rel_tol=1e-4)


def test_token_counts_are_labelled_honestly():
    from lab.inspect.quality import describe_tokens

    text = describe_tokens(510, 512, 2)
    assert text.startswith("510 predicted tokens of the 512 read") and "2 windows" in text and "first token" in text
    assert describe_tokens(63, 0, 0) == "63 predicted tokens"


@pytest.mark.slow
def test_run_loads_each_precision_in_turn(tiny_model_dir):
    seen = []
    results = run_loading_lab(str(tiny_model_dir), ["fp32", "int8"], quality=NO_QUALITY,
                              report=lambda m, f=None, partial=None: seen.append((m, f, len(partial or []))))
    assert [r["precision"] for r in results] == ["fp32", "int8"]
    assert results[0]["linear_class"] == "Linear" and results[1]["linear_class"] == "Linear8bitLt"
    assert all("error" not in r for r in results)
    assert seen[-1][1] == 1.0 and seen[-1][2] == 2  # progress ends at 100% with both results
    assert any(f is not None and 0 < f < 1 and n == 1 for _, f, n in seen)  # partial results while running


def test_cancel_stops_before_the_next_precision(tiny_model_dir):
    cancel = threading.Event()

    def report(message, fraction=None, partial=None):
        if partial:  # the first precision is done: the user presses Cancel
            cancel.set()

    results = run_loading_lab(
        str(tiny_model_dir), ["fp32", "int8", "nf4"], quality=NO_QUALITY, report=report, cancel=cancel
    )
    assert [r["precision"] for r in results] == ["fp32"]


def test_load_peak_counts_the_float_copy_quantized_from_on_cpu(tiny_model_dir):
    from lab.inspect.load_report import load_peak_bytes, predict
    from lab.models.sources import resolve_source

    source = resolve_source(str(tiny_model_dir))
    nf4, fp32 = predict(source, "nf4"), predict(source, "fp32")
    assert load_peak_bytes(source, "nf4", nf4, "compute", "cpu") == nf4.weights_bytes + fp32.weights_bytes
    assert load_peak_bytes(source, "fp32", fp32, "compute", "cpu") == fp32.weights_bytes


def test_a_precision_the_device_cannot_run_is_reported_and_the_run_goes_on(tiny_model_dir):
    results = run_loading_lab(str(tiny_model_dir), ["int8", "fp4"], device="mps", quality=NO_QUALITY)
    assert [r["precision"] for r in results] == ["int8", "fp4"]
    assert "bitsandbytes cannot run INT8 on device 'mps'" in results[0]["error"]
    assert "Use fp32/fp16/bf16" in results[1]["error"]


def test_bad_inputs_give_clear_errors(tmp_path, tiny_model_dir, monkeypatch):
    with pytest.raises(LabError, match="neither an existing model folder"):
        run_loading_lab(str(tmp_path / "nope"), ["fp32"])
    with pytest.raises(LabError, match="Unknown precision 'int3'"):
        run_loading_lab(str(tiny_model_dir), ["int3"])
    with pytest.raises(LabError, match="No precision chosen"):
        run_loading_lab(str(tiny_model_dir), [])
    with pytest.raises(LabError, match="cannot run INT8 on device 'mps'"):
        check_supported("int8", "mps")
    with pytest.raises(LabError, match=r"only 1.00 MB of RAM is free.*Try a 4-bit precision"):
        check_fits(10**9, "cpu", "A model", available=10**6)
    check_fits(10**6, "cpu", "A model", available=10**9)  # fits: no error
    # A Hub id that is not cached, offline: the whole run fails at once, before any precision starts.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LabError, match="Hugging Face Hub cache.*Offline, use 'embedded'"):
        run_loading_lab("no-such-owner/no-such-model", ["fp32", "nf4"], quality=NO_QUALITY)


def test_quant_inspect_uses_bitsandbytes_tables_and_errors(tiny_model_dir):
    levels = level_tables()
    assert len(levels["nf4"]) == 16 and len(levels["fp4"]) == 16
    assert levels["nf4"][0] == -1.0 and levels["nf4"][-1] == 1.0 and 0.0 in levels["nf4"]
    names = linear_weight_names(str(tiny_model_dir))
    assert len(names) == 14 and not any("embed" in n or "lm_head" in n for n in names)
    w = load_float_weight(str(tiny_model_dir), names[0])
    errs = {s: quantization_error(w, s).relative for s in ("int8", "fp4", "nf4", "nf4-dq")}
    assert 0 < errs["int8"] < errs["nf4"] < errs["fp4"]  # 8 bits beat 4; NF4 beats FP4 on normal weights
    hist = weight_histogram(w, names[0])
    assert sum(hist.counts) == w.numel() and math.isclose(sum(hist.level_share["nf4"]), 1.0, rel_tol=1e-6)
    rows = layer_errors(str(tiny_model_dir), names=names[:3])
    assert [r["name"] for r in rows] == names[:3] and rows[0]["layer"] == 0
    assert rows[0]["nf4"] == pytest.approx(quantization_error(w, "nf4").relative)


def test_memory_snapshot_sees_an_allocation():
    before = MemorySnapshot.take("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    grown = MemorySnapshot.take("cpu").minus(before)["rss_bytes"]
    del block
    free_memory()
    assert grown >= 48 * 2**20


@pytest.mark.slow
def test_cli_load_json_has_the_issue_keys(tiny_model_dir):
    out = subprocess.run([sys.executable, "-m", "lab", "load", "--model", str(tiny_model_dir), "--precision", "nf4-dq",
                          "--perplexity-tokens", "32", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "measured_bytes",
        "hf_footprint_bytes",
        "predicted_bytes",
        "load_seconds",
        "device",
        "dtype",
        "linear_class",
        "perplexity",
    ):
        assert data[key] is not None, key
    assert data["linear_class"] == "Linear4bit"
    assert data["dtype"] == str(compute_dtype(data["device"])).removeprefix("torch.")
    assert abs(data["predicted_bytes"] - data["measured_bytes"]) / data["measured_bytes"] <= 0.01


@pytest.mark.slow
def test_cli_bad_model_exits_2_with_a_hint(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lab", "load", "--model", str(tmp_path / "missing")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "missing" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.embedded
def test_embedded_model_bf16_int8_nf4_match_prediction(embedded_dir):
    """End to end on SmolLM2-135M (tied embeddings, 30 layers): measured == independent count, and
    prediction within 1%. benchmarks/bench_loading.py does the same for all seven precisions."""
    for precision in ("bf16", "int8", "nf4"):  # the benchmark covers all seven; these cover every kind of state
        loaded = load_model("embedded", precision)
        fp = measure_model(loaded.model)
        assert fp.total_bytes == independent_count(loaded.model), precision
        from lab.inspect.load_report import predict

        predicted = predict(loaded.source, precision).weights_bytes
        assert abs(predicted - fp.total_bytes) / fp.total_bytes <= 0.01, (precision, predicted, fp.total_bytes)
        loaded = None
        free_memory()


@pytest.mark.slow
def test_rss_growth_is_explained_from_the_loads_own_figures(tiny_model_dir):
    """The explanation quotes the report's own numbers, and the anon/file split adds up to the RSS growth."""
    from lab.inspect.load_report import explain_rss
    from lab.units import fmt_bytes

    for precision in ("fp32", "int8"):
        r = measure_load(str(tiny_model_dir), precision, quality=NO_QUALITY).to_json()
        mem = r["memory"]
        text = explain_rss(r)
        assert text.startswith(f"+{fmt_bytes(mem['rss_bytes'])} for {fmt_bytes(r['measured_bytes'])} of weights")
        if mem.get("rss_anon_bytes") is not None:  # Linux: RssAnon + RssFile (+ RssShmem) = VmRSS
            assert abs(mem["rss_anon_bytes"] + mem["rss_file_bytes"] - mem["rss_bytes"]) <= 1 << 20
    mapped = {"precision": "fp32", "measured_bytes": 538_000_000, "rss_at_release_bytes": 605_000_000,
              "memory": {"rss_bytes": 66_000_000, "rss_anon_bytes": 48_000_000, "rss_file_bytes": 18_000_000}}
    assert "memory-mapped" in explain_rss(mapped) and fmt_bytes(605_000_000) in explain_rss(mapped)
    assert "anonymous" not in explain_rss(mapped)  # the weights are not in anonymous memory yet
    quantized = {"precision": "int8", "measured_bytes": 220_000_000,
                 "memory": {"rss_bytes": 772_000_000, "rss_anon_bytes": 346_000_000, "rss_file_bytes": 426_000_000}}
    text = explain_rss(quantized)
    assert "memory-mapped" not in text and "quantizing read every Linear weight" in text
    assert fmt_bytes(426_000_000) in text and "leftovers" in text


@pytest.mark.slow
def test_progress_moves_within_the_first_precision(tiny_model_dir):
    """Issue 20 papercut 10: the bar no longer sits at 0% until the first precision is over."""
    from lab.inspect.quality import QualityConfig

    seen = []
    run_loading_lab(str(tiny_model_dir), ["fp32", "int8"], quality=QualityConfig(perplexity_tokens=32, max_new_tokens=2,
                                                                                 prompts=("Hi", "Bye")),
                    report=lambda m, f=None, partial=None: seen.append((f, len(partial or []))))
    first = [f for f, done in seen if done == 0 and f is not None]
    assert max(first) >= 0.25 and first == sorted(first)  # it moves through the load and the scoring, forwards
    assert all(f <= 0.5 for f in first)  # and stays within the first precision's half
