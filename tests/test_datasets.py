"""Datasets: bundled sets, format detection, line-numbered validation, prompt formatting."""

from __future__ import annotations

import json
import re

import pytest

from lab.data import datasets as ds
from lab.data.prompts import ALPACA_HEADER
from lab.errors import LabError


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bundled_datasets_have_splits_cards_and_alpaca_rows():
    assert {"infra-alpaca", "banking-intents", "style"} <= set(ds.list_datasets())
    for name in ("infra-alpaca", "banking-intents", "style"):
        assert ds.dataset_card(name).startswith(f"# {name}")
        for split in ds.SPLITS:
            check = ds.check_dataset(name, split)
            assert check.format == "alpaca" and not check.problems and check.rows
    assert len(ds.load_rows("infra-alpaca")) + len(ds.load_rows("infra-alpaca", "test")) >= 250
    categories = {r["category"] for r in ds.load_rows("infra-alpaca")}
    assert categories == {"terraform", "kubernetes", "docker", "cicd", "mlops"}


def test_banking_answers_are_one_listed_label_and_splits_are_disjoint():
    train, test = ds.load_rows("banking-intents"), ds.load_rows("banking-intents", "test")
    labels = set()
    for r in train + test:
        allowed = r["instruction"].split("Allowed labels: ")[1].split(", ")
        assert r["output"] in allowed
        labels.add(r["output"])
    assert 10 <= len(labels) <= 15
    assert not {r["input"] for r in train} & {r["input"] for r in test}
    # every label is in the test split equally often, so accuracy is balanced
    counts = {label: sum(r["output"] == label for r in test) for label in labels}
    assert len(set(counts.values())) == 1


def test_style_answers_share_an_unmistakable_style():
    for r in ds.load_rows("style") + ds.load_rows("style", "test"):
        assert r["output"].startswith("Arr, matey! ") and r["output"].endswith(" Yo ho ho!")


def test_detect_format_for_each_form():
    assert ds.detect_format([{"instruction": "a", "output": "b"}]) == "alpaca"
    assert (
        ds.detect_format([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
        == "messages"
    )
    assert ds.detect_format([{"prompt": "a", "completion": "b"}]) == "prompt_completion"
    with pytest.raises(LabError, match=r"line 1 has fields: 'question', 'answer'.*'instruction' and 'output'"):
        ds.detect_format([{"question": "a", "answer": "b"}])
    with pytest.raises(LabError, match="no rows"):
        ds.detect_format([])


def test_malformed_rows_are_refused_or_skipped_with_line_numbers(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "a", "output": "b"},
        "{not json",
        {"instruction": "c"},
        "",
        {"instruction": "e", "input": "f", "output": "g"},
        "[1, 2]",
    ])
    with pytest.raises(LabError) as e:
        ds.load_rows(str(f))
    msg = str(e.value)
    assert (
        "3 malformed" in msg
        and "line 2: not valid JSON" in msg
        and "line 3: missing 'output'" in msg
        and "line 6" in msg
    )
    check = ds.check_dataset(str(f), on_bad="skip")
    assert [r["instruction"] for r in check.rows] == ["a", "e"]
    assert check.lines == [1, 5] and [p.line for p in check.problems] == [2, 3, 6]
    assert "3 malformed row(s) skipped" in check.summary()


def test_empty_and_missing_datasets_are_clear_errors(tmp_path):
    with pytest.raises(LabError, match="empty"):
        ds.load_rows(str(write_jsonl(tmp_path / "e.jsonl", [""])))
    with pytest.raises(LabError, match="not found"):
        ds.load_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(LabError, match="only a train split"):
        ds.load_rows(str(write_jsonl(tmp_path / "one.jsonl", [{"prompt": "a", "completion": "b"}])), "test")
    bad_messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(LabError, match="line 1: the last message must be the assistant"):
        ds.load_rows(str(bad_messages))


def test_csv_and_folder_with_splits(tmp_path):
    (tmp_path / "train.csv").write_text(
        'instruction,input,output\nSay hi,,hi\n"Add, please",1 2,3\nbroken,row,with,extra\n'
    )
    (tmp_path / "test.csv").write_text("prompt,completion\nQ,A\n")
    check = ds.check_dataset(str(tmp_path), on_bad="skip")
    assert check.format == "alpaca" and [r["output"] for r in check.rows] == ["hi", "3"]
    assert check.problems[0].line == 4
    assert ds.check_dataset(str(tmp_path), "test").format == "prompt_completion"
    assert ds.dataset_name(str(tmp_path / "train.csv")) == "train"


def test_prompt_and_answer_for_each_form():
    msgs, ans = ds.prompt_and_answer({"instruction": "Classify.", "input": "my card", "output": "lost"})
    assert msgs == [{"role": "user", "content": "Classify.\n\nmy card"}] and ans == "lost"
    assert ds.prompt_and_answer({"instruction": "Hi", "input": "", "output": "yo"})[0][0]["content"] == "Hi"
    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    assert ds.prompt_and_answer({"messages": chat}) == (chat[:2], "a")
    assert ds.prompt_and_answer({"prompt": "p", "completion": "c"}) == ([{"role": "user", "content": "p"}], "c")
    conv = {"prompt": chat[:2], "completion": chat[2:]}
    assert ds.prompt_and_answer(conv) == (chat[:2], "a")


def test_training_text_is_chat_template_or_alpaca_fallback(tokenizer):
    row = {"instruction": "What is 2+2?", "output": "4"}
    prompt, answer = ds.render_example(tokenizer, row)
    assert prompt == tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert answer.startswith("4") and tokenizer.eos_token in answer
    ex = ds.training_example(tokenizer, row)
    assert ex["completion"] == [{"role": "assistant", "content": "4"}]

    import copy

    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    prompt, answer = ds.render_example(plain, row)
    assert prompt.startswith(ALPACA_HEADER) and prompt.endswith("### Instruction:\nWhat is 2+2?\n\n### Response:\n")
    assert answer == "4" + plain.eos_token
    assert ds.training_example(plain, row) == {"prompt": prompt, "completion": "4"}


def test_preview_counts_tokens(tokenizer):
    check = ds.check_dataset("style")
    rows = ds.preview(tokenizer, check.rows, check.lines, n=2)
    assert len(rows) == 2 and rows[0].line == 1
    assert rows[0].prompt_tokens == len(tokenizer(rows[0].prompt, add_special_tokens=False)["input_ids"])
    assert rows[0].answer.startswith("Arr, matey!") and rows[0].answer_tokens > 5
    stats = ds.length_stats(ds.token_lengths(tokenizer, check.rows), max_length=40)
    assert stats["rows"] == 60 and stats["min"] <= stats["mean"] <= stats["max"] and stats["truncated"] > 0


def test_a_max_length_shorter_than_every_prompt_is_refused_with_what_works(embedded_dir):
    """Truncated to max length, a row whose prompt fills it keeps no answer token: with every row so, training
    would die deep inside torch (num_samples=0); the lab says what max length would do instead."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    rows = ds.check_dataset("style", "train", "refuse").rows
    prompts = sorted(len(tok(ds.render_example(tok, r)[0], add_special_tokens=False)["input_ids"]) for r in rows)
    with pytest.raises(LabError, match=f"Max length {prompts[0]} leaves no answer token") as e:
        ds.check_max_length(tok, rows, prompts[0])
    suggested = int(re.search(r"max length of (\d+)", e.value.hint).group(1))
    assert ds.check_max_length(tok, rows, suggested) is None or "rows have a prompt" in ds.check_max_length(
        tok, rows, suggested)
    some = ds.check_max_length(tok, rows, prompts[-1])  # the longest prompt fills it: that row (at least) is lost
    assert some and some.startswith(f"{sum(p >= prompts[-1] for p in prompts)} of {len(rows)} rows")
    assert ds.check_max_length(tok, rows, prompts[-1] + 1) is None
