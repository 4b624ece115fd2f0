# ruff: noqa: F811  (pytest fixtures imported from tests/fixtures_playground.py)
"""Evaluation: per-model answers equal plain transformers/peft greedy output, exact-match accuracy
and loss are computed independently here and must agree, reports export every example."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from lab.environment import device_type
from lab.errors import LabError
from lab.generate.adapters import inspect_adapter
from lab.generate.compare import BASE_COLUMN
from lab.generate.evaluate import EvalSettings, evaluate, is_labelled, load_examples, normalize, to_csv, to_markdown
from lab.models.loading import load_model
from tests.fixtures_playground import tiny_adapters  # noqa: F401

QUESTIONS = ["Is the sky green?", "Is water wet?", "Do fish fly?", "Is ice cold?", "Can cats bark?", "Is fire hot?"]
N = 8


def plain_answers(model_dir, prompts, adapter=None, n=N):
    from lab.data.prompts import build_chat_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device_type()).eval()  # the device evaluate uses
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).eval()
    out = []
    for p in prompts:
        ids = tok(build_chat_prompt(tok, [{"role": "user", "content": p}]), return_tensors="pt",
                  add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            g = model.generate(**ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(g[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory, tiny_model_dir, tiny_adapters):
    """Rows 0-2 are labelled with what the alpha adapter really answers: alpha must score exactly 3/6."""
    alpha = plain_answers(tiny_model_dir, QUESTIONS, tiny_adapters["alpha"])
    folder = tmp_path_factory.mktemp("labelled")
    rows = [{"instruction": q, "input": "", "output": alpha[i] if i < 3 else "no"} for i, q in enumerate(QUESTIONS)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return folder


@pytest.fixture
def loaded(tiny_model_dir):
    return load_model(str(tiny_model_dir), "fp32")


@pytest.mark.slow
def test_accuracy_and_answers_match_plain_generate(loaded, tiny_model_dir, tiny_adapters, labelled_dir):
    examples = load_examples(str(labelled_dir))
    alpha = inspect_adapter(str(tiny_adapters["alpha"]))
    r = evaluate(loaded, [alpha], examples, "labelled", EvalSettings(metric="accuracy", max_new_tokens=N))
    base_ref = plain_answers(tiny_model_dir, QUESTIONS)
    alpha_ref = plain_answers(tiny_model_dir, QUESTIONS, tiny_adapters["alpha"])
    assert [row["answers"][BASE_COLUMN] for row in r.rows] == base_ref
    assert [row["answers"]["alpha"] for row in r.rows] == alpha_ref
    m = r.metrics()
    assert m["alpha"]["correct"] == 3 and m["alpha"]["accuracy"] == 0.5
    expected_base = sum(normalize(a) == normalize(e.answer) for a, e in zip(base_ref, examples, strict=True))
    assert m[BASE_COLUMN]["correct"] == expected_base
    assert [row["differs"] for row in r.rows] == [
        normalize(a) != normalize(b) for a, b in zip(base_ref, alpha_ref, strict=True)
    ]


def test_loss_equals_an_independent_computation(loaded, tiny_model_dir, tiny_adapters, labelled_dir):
    from lab.data.datasets import render_example

    examples = load_examples(str(labelled_dir), limit=2)
    alpha = inspect_adapter(str(tiny_adapters["alpha"]))
    r = evaluate(loaded, [alpha], examples, "labelled", EvalSettings(max_new_tokens=2))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    row = {"instruction": QUESTIONS[0], "input": "", "output": examples[0].answer}
    prompt, answer = render_example(tok, row)
    p, a = tok(prompt, add_special_tokens=False)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = base(torch.tensor([p + a])).logits[0, len(p) - 1:-1]
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(a)).item()
    assert r.rows[0]["loss"][BASE_COLUMN] == pytest.approx(expected, abs=1e-3)
    assert r.rows[0]["loss"]["alpha"] != pytest.approx(expected, abs=1e-3)
    m = r.metrics()[BASE_COLUMN]
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-3)


def test_free_text_set_uses_perplexity_and_reports_export(loaded, tiny_adapters, tmp_path):
    rows = [{"prompt": f"Tell me about {t}.", "completion": f"{t.capitalize()} is a topic with many sides to it."}
            for t in ("rivers", "stars", "bread")]
    f = tmp_path / "free.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    examples = load_examples(str(f))  # a single file: every row is a test example
    assert len(examples) == 3 and not is_labelled(examples)
    alpha = inspect_adapter(str(tiny_adapters["alpha"]))
    r = evaluate(loaded, [alpha], examples, "free", EvalSettings(max_new_tokens=4))
    assert r.metric == "perplexity" and "accuracy" not in r.metrics()[BASE_COLUMN]
    md = to_markdown(r)
    assert "| base |" in md and "| alpha |" in md and md.count("Tell me about") == 3
    assert ("**≠**" in md) == any(row["differs"] for row in r.rows)
    table = list(csv.DictReader(io.StringIO(to_csv(r))))
    assert len(table) == 3 and {"base_answer", "alpha_answer", "base_loss", "alpha_loss"} <= set(table[0])


def test_bundled_banking_set_is_labelled():
    examples = load_examples("banking-intents")
    assert len(examples) == 72 and is_labelled(examples)
    # Any first N rows (the page's "Examples" field), even when no label repeats among them.
    for n in (1, 4, 8, 12, 20):
        first = load_examples("banking-intents", n)
        assert len({e.answer for e in first}) > 1 or n == 1
        assert is_labelled(first), n
    for name in ("infra-alpaca", "style"):  # free-text answers
        assert not is_labelled(load_examples(name))


def test_auto_metric_scores_a_few_banking_examples_by_exact_match(loaded):
    examples = load_examples("banking-intents", 3)
    assert len({e.answer for e in examples}) == 3  # three different labels, none repeated
    r = evaluate(loaded, [], examples, "banking-intents", EvalSettings(metric="auto", max_new_tokens=2))
    assert r.metric == "accuracy"
    m = r.metrics()[BASE_COLUMN]
    correct = sum(normalize(row["answers"][BASE_COLUMN]) == normalize(e.answer) for row, e in zip(r.rows, examples,
                                                                                                strict=True))
    assert m["correct"] == correct and m["accuracy"] == round(correct / 3, 4)


def test_bad_datasets_are_clear(tmp_path):
    with pytest.raises(LabError, match="not found"):
        load_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(LabError):
        load_examples(str(tmp_path / "bad.jsonl"))


def test_cli_evaluate_json(tiny_model_dir, tiny_adapters, labelled_dir, capsys, tmp_path):
    from lab.cli import main

    md = tmp_path / "report.md"
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(tiny_adapters["alpha"]),
               "--dataset", str(labelled_dir), "--limit", "3", "--metric", "accuracy", "--max-new-tokens", str(N),
               "--markdown", str(md), "--json"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["metrics"]["alpha"]["correct"] == 3 and len(r["rows"]) == 3
    assert set(r["metrics"]) == {"base", "alpha"} and md.read_text().startswith("# Evaluation")
    rc = main(["evaluate", "--model", str(tiny_model_dir), "--dataset", str(tmp_path / "nope.jsonl")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_progress_says_which_example_of_how_many_on_every_line():
    """Issue 20 papercut 7: the queue's own messages ('Running: one example × 2 columns') hid "k of N"."""
    from lab.generate.evaluate import EvalProgress

    seen = []
    progress = EvalProgress(lambda message, fraction=None, partial=None, state=None: seen.append((message, fraction)),
                            total=3)
    progress.message("Running: one example × 2 columns", state="running")
    progress.scored(1, 3, {"index": 0})
    progress.message("Running: one example × 2 columns", state="running")
    assert [m for m, _ in seen] == ["Example 1 of 3 · Running: one example × 2 columns", "Example 1 of 3 scored",
                                    "Example 2 of 3 · Running: one example × 2 columns"]
    assert [f for _, f in seen] == [0.0, 1 / 3, 1 / 3] and progress.rows == [{"index": 0}]


def test_the_examples_show_what_sets_them_apart():
    """The shared instruction goes; each customer query stays. Prompts with nothing in common stay whole."""
    from lab.generate.evaluate import EvalSettings, shown_prompts

    rows = [{"prompt": "Classify it.\nLabels: a, b\n\nWhere is my card?"},
            {"prompt": "Classify it.\nLabels: a, b\n\nHi"}]
    assert shown_prompts(rows) == ["Where is my card?", "Hi"]
    plain = [{"prompt": "Tell me about cats."}, {"prompt": "Intro\n\nTell me about dogs."}]
    assert shown_prompts(plain) == ["Tell me about cats.", "Intro\n\nTell me about dogs."]
    assert EvalSettings().limit == 16  # a first look takes a minute or two on a CPU, not all 72 examples
