"""Training data: the bundled datasets, user files (JSONL/CSV) and Hub ids, in one of three forms.

Forms (detected from the fields, like TRL's dataset formats):

- alpaca             {"instruction", "input" (optional), "output"}
- messages           {"messages": [{"role", "content"}, ...]}  (the last turn is the assistant's answer)
- prompt_completion  {"prompt", "completion"}  (strings, or lists of chat messages)

Every row becomes (prompt messages, reference answer) through `prompt_and_answer`. The prompt is
rendered by the lab's one prompt builder (`lab.data.prompts.build_chat_prompt`: the tokenizer's
chat template when it has one, the Alpaca template otherwise), the same the playground and the
evaluation use. So the Playground's before/after accuracy sees exactly the prompt the adapter was
trained on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lab import policy
from lab.data.prompts import alpaca_prompt, build_chat_prompt, has_chat_template
from lab.errors import LabError
from lab.paths import ASSETS_DIR, uploads_dir

DATASETS_DIR = ASSETS_DIR / "datasets"
SPLITS = ("train", "test")
FORMATS = ("alpaca", "messages", "prompt_completion")
# The fields that identify each form, in the order detection prefers them.
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
}
FORMAT_LABELS = {"alpaca": "Alpaca (instruction / input / output)", "messages": "chat messages",
                 "prompt_completion": "prompt / completion"}
ROLES = ("system", "user", "assistant")
MAX_LISTED_PROBLEMS = 5
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


# --------------------------------------------------------------------------- bundled datasets
def list_datasets() -> list[str]:
    """Names of the bundled datasets (folders of assets/datasets with a train.jsonl)."""
    return sorted(p.parent.name for p in DATASETS_DIR.glob("*/train.jsonl"))


def dataset_card(name: str) -> str:
    """The bundled dataset's README.md (a short card), or '' when it has none."""
    card = DATASETS_DIR / name / "README.md"
    return card.read_text() if card.is_file() else ""


def dataset_name(name_or_path: str) -> str:
    """Short name used in run names: the bundled name, a file's stem, or a Hub id's last part."""
    if name_or_path in list_datasets():
        return name_or_path
    if policy.public_mode():
        name_or_path = check_dataset_source(name_or_path)
    p = Path(name_or_path)
    if p.is_dir():
        return p.name
    if p.suffix:
        return p.stem
    return name_or_path.rstrip("/").split("/")[-1]


def dataset_file(name_or_path: str, split: str = "train") -> Path | None:
    """The file holding `split`, or None for a Hub id. A bundled name or a folder holds
    train/test files; a single file is its own (only) training split."""
    if split not in SPLITS:
        raise LabError(f"Unknown split {split!r}.", f"Choose one of: {', '.join(SPLITS)}.")
    if policy.public_mode():  # bundled, uploaded (inside runs/uploads/) or allow-listed Hub datasets only
        name_or_path = check_dataset_source(name_or_path)
    if name_or_path in list_datasets():
        return DATASETS_DIR / name_or_path / f"{split}.jsonl"
    p = Path(name_or_path).expanduser()
    if p.is_dir():
        for ext in (".jsonl", ".json", ".csv"):
            if (p / f"{split}{ext}").is_file():
                return p / f"{split}{ext}"
        raise LabError(
            f"{p} has no {split}.jsonl or {split}.csv.", "Put the rows in train.jsonl (and test.jsonl) there."
        )
    if p.is_file():
        if split != "train":
            raise LabError(f"{p} is a single file: it has only a train split.",
                           "Pass a folder with train.jsonl and test.jsonl to have a test split.")
        return p
    if _HUB_ID.match(name_or_path) and not p.suffix:
        return None
    known = ", ".join(list_datasets())
    raise LabError(f"Dataset {name_or_path!r} not found: not a bundled dataset, a file or a folder.",
                   f"Use one of {known}, a .jsonl/.csv file, or a Hub id like owner/name when online.")


def check_dataset_source(source: str) -> str:
    """Public mode's dataset field: a bundled name, an upload (inside runs/uploads/), or an allow-listed Hub id."""
    text = (source or "").strip()
    if text in list_datasets():
        return text
    if policy.is_hub_id(text) and not policy.looks_like_path(text) and not Path(text).suffix:
        if policy.allow_listed(text):
            return text
        raise LabError(
            f"Hub dataset {text!r} is not allow-listed on this server.",
            f"Pick a bundled dataset ({', '.join(list_datasets())}) or upload a file.",
        )
    path = Path(text)
    lexically_in_uploads = path.is_absolute() and Path(os.path.abspath(uploads_dir())) in path.parents
    if ".." in path.parts or not lexically_in_uploads:
        raise LabError(
            f"Dataset {text!r} is not allowed here. {policy.NO_PATHS}",
            f"Pick a bundled dataset ({', '.join(list_datasets())}) or upload a file.",
        )
    return str(policy.inside(path, uploads_dir(), text))  # an upload that is a symlink out of runs/ is refused here


def save_upload(filename: str, data: bytes) -> Path:
    """Keep a file uploaded on a page (a training set, a test file) in runs/uploads/ and return its path.
    No path from the browser reaches the file system: only the base name is kept, cleaned, in a folder
    named by the content's hash, so two people uploading 'train.jsonl' never overwrite each other. In
    public mode the size is capped first (lab.policy)."""
    policy.check_upload_size(filename, len(data))
    stem, suffix = Path(Path(filename).name).stem, Path(filename).suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise LabError(f"Upload {filename!r} is not a .jsonl, .json or .csv file.", "Upload the rows as JSONL or CSV.")
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip(".-")[:60] or "upload"
    folder = uploads_dir() / hashlib.sha256(data).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{safe}{suffix}"
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, target)  # a concurrent reader never sees half a file
    return target


def has_split(name_or_path: str, split: str) -> bool:
    try:
        f = dataset_file(name_or_path, split)
    except LabError:
        return False
    return f is None or f.is_file()


def local_test_rows(name_or_path: str) -> int | None:
    """Good rows in the dataset's test split on disk (malformed ones skipped), or None when it has none
    here (a single file, or a Hub id whose splits are only known once downloaded)."""
    if not has_split(name_or_path, "test") or dataset_file(name_or_path, "test") is None:
        return None
    return len(load_rows(name_or_path, "test", "skip"))


# --------------------------------------------------------------------------- reading
@dataclass
class RowProblem:
    line: int  # 1-based line in the file (CSV: the row's line; Hub: the row's index + 1)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class DatasetCheck:
    """A dataset split read and validated: the good rows, their line numbers, what was wrong."""

    source: str
    split: str
    format: str
    rows: list[dict]
    lines: list[int]
    problems: list[RowProblem] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.rows) + len(self.problems)

    def summary(self) -> str:
        s = f"{len(self.rows)} rows in {FORMAT_LABELS[self.format]} form"
        if self.problems:
            s += f"; {len(self.problems)} malformed row(s) skipped ({describe_problems(self.problems)})"
        return s


def describe_problems(problems: list[RowProblem]) -> str:
    shown = "; ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    return shown + (f"; and {more} more" if more > 0 else "")


def _read_jsonl(path: Path) -> list[tuple[int, dict | str]]:
    """(line number, row) for each non-blank line; a string instead of a row says what is wrong."""
    out: list[tuple[int, dict | str]] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LabError(f"{path} is not UTF-8 text ({e}).", "Save the file as UTF-8.") from e
    if path.suffix == ".json" and text.lstrip().startswith("["):  # a JSON array of rows
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise LabError(
                f"{path} is not valid JSON: {e}.", "Fix the file or save it as JSONL (one object per line)."
            ) from e
        return [
            (i + 1, r if isinstance(r, dict) else f"item is a {type(r).__name__}, not an object")
            for i, r in enumerate(data)
        ]
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            out.append((n, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        out.append((n, obj if isinstance(obj, dict) else f"a JSON {type(obj).__name__}, not an object"))
    return out


def _read_csv(path: Path) -> list[tuple[int, dict | str]]:
    out: list[tuple[int, dict | str]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            return []
        for r in reader:
            line = reader.line_num
            if None in r:
                out.append((line, f"{len(r[None])} value(s) more than the {len(reader.fieldnames)} header columns"))
                continue
            row = {k: v for k, v in r.items() if k is not None}
            for key in ("messages", "prompt", "completion"):  # chat fields may be JSON-encoded in a cell
                v = row.get(key)
                if isinstance(v, str) and v.lstrip().startswith("["):
                    try:
                        row[key] = json.loads(v)
                    except json.JSONDecodeError:
                        pass
            out.append((line, row))
    return out


def _read_hub(hub_id: str, split: str) -> list[tuple[int, dict | str]]:
    try:
        # datasets: 0.8 s to import (and it reads HF_HOME at import), and only a Hub dataset needs it
        from datasets import load_dataset

        ds = load_dataset(hub_id, split=split)
    except Exception as e:  # offline, unknown id, no such split: all the same to the user
        raise LabError(
            f"Could not load the Hub dataset {hub_id!r} (split {split!r}): {type(e).__name__}: {str(e)[:200]}",
            "The Hub needs network access; offline, use a bundled dataset or a local .jsonl/.csv file.",
        ) from e
    return [(i + 1, dict(r)) for i, r in enumerate(ds)]


def read_records(name_or_path: str, split: str = "train") -> list[tuple[int, dict | str]]:
    path = dataset_file(name_or_path, split)
    if path is None:
        return _read_hub(name_or_path, split)
    if not path.is_file():
        raise LabError(f"{path} does not exist.", f"Dataset {name_or_path!r} has no {split} split.")
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise LabError(
        f"Unsupported dataset file type {path.suffix!r} ({path}).", "Use .jsonl (one JSON object per line) or .csv."
    )


# --------------------------------------------------------------------------- formats
def _fields_present(row: dict, fmt: str) -> bool:
    return all(row.get(k) not in (None, "") for k in FORMAT_FIELDS[fmt])


def detect_format(rows: list[dict], lines: list[int] | None = None) -> str:
    """'alpaca' | 'messages' | 'prompt_completion': the form most rows have. Raises a LabError that
    names the missing fields (with line numbers) when no row has the fields of any form."""
    if not rows:
        raise LabError("The dataset has no rows.", "Add at least one example (JSONL: one JSON object per line).")
    counts = {fmt: sum(_fields_present(r, fmt) for r in rows) for fmt in FORMATS}
    best = max(FORMATS, key=lambda f: counts[f])  # max keeps the first on ties: the FORMATS order
    if counts[best] == 0:
        lines = lines or list(range(1, len(rows) + 1))
        seen = ", ".join(repr(k) for k in rows[0]) or "none"
        raise LabError(
            f"No row has the fields of a known form (line {lines[0]} has fields: {seen}).",
            "Alpaca rows need 'instruction' and 'output' ('input' optional); chat rows need 'messages'; "
            "prompt/completion rows need 'prompt' and 'completion'.",
        )
    return best


def row_problem(row: dict, fmt: str) -> str | None:
    """Why `row` is not a valid row of form `fmt`, or None when it is."""
    missing = [k for k in FORMAT_FIELDS[fmt] if row.get(k) in (None, "")]
    if missing:
        has = ", ".join(map(repr, row)) or "nothing"
        return f"missing {', '.join(repr(k) for k in missing)} for {FORMAT_LABELS[fmt]} form (has: {has})"
    if fmt == "alpaca":
        for k in ("instruction", "input", "output"):
            if row.get(k) is not None and not isinstance(row[k], str):
                return f"{k!r} must be text, got {type(row[k]).__name__}"
        return None
    if fmt == "messages":
        return _messages_problem(row["messages"], need_answer=True)
    p, c = row["prompt"], row["completion"]
    if isinstance(p, str) and isinstance(c, str):
        return None
    if isinstance(p, list) and isinstance(c, list):
        return _messages_problem(p, need_answer=False) or _messages_problem(c, need_answer=True)
    return "'prompt' and 'completion' must both be text or both be lists of chat messages"


def _messages_problem(messages, need_answer: bool) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {role, content} objects"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"message {i + 1} must be {{'role': one of {'/'.join(ROLES)}, 'content': text}}, got {str(m)[:80]}"
    if need_answer and messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's answer"
    return None


def check_rows(records: list[tuple[int, dict | str]], source: str = "rows", split: str = "train",
               on_bad: str = "refuse") -> DatasetCheck:
    """Validate (line, row) records. on_bad='refuse' raises a LabError listing the bad lines;
    'skip' keeps the good rows and reports the bad ones in `.problems`."""
    if on_bad not in ("refuse", "skip"):
        raise LabError(f"Unknown on_bad={on_bad!r}.", "Choose 'refuse' or 'skip'.")
    if not records:
        raise LabError(
            f"{source} ({split}) is empty: it has no rows.",
            "Add at least one example (JSONL: one JSON object per line).",
        )
    parsed = [(n, r) for n, r in records if isinstance(r, dict)]
    fmt = detect_format([r for _, r in parsed], [n for n, _ in parsed]) if parsed else None
    if fmt is None:
        raise LabError(
            f"{source} ({split}): no line is a JSON object "
            f"({describe_problems([RowProblem(n, r) for n, r in records])}).",
            'Each line must be one JSON object, e.g. {"instruction": ..., "output": ...}.',
        )
    rows, lines, problems = [], [], []
    for n, r in records:
        why = r if isinstance(r, str) else row_problem(r, fmt)
        if why:
            problems.append(RowProblem(n, why))
        else:
            rows.append(r)
            lines.append(n)
    if problems and on_bad == "refuse":
        raise LabError(f"{source} ({split}) has {len(problems)} malformed row(s): {describe_problems(problems)}.",
                       "Fix those lines, or choose to skip malformed rows (--skip-bad-rows on the CLI).")
    if not rows:
        raise LabError(f"{source} ({split}) has no valid rows: {describe_problems(problems)}.", "Fix the file's rows.")
    return DatasetCheck(source, split, fmt, rows, lines, problems)


def check_dataset(name_or_path: str, split: str = "train", on_bad: str = "refuse") -> DatasetCheck:
    """Read and validate one split of a bundled dataset, a file/folder or a Hub id."""
    return check_rows(read_records(name_or_path, split), name_or_path, split, on_bad)


def load_rows(name_or_path: str, split: str = "train", on_bad: str = "refuse") -> list[dict]:
    """The valid rows of one split (see `check_dataset` for line-numbered problems)."""
    return check_dataset(name_or_path, split, on_bad).rows


# --------------------------------------------------------------------------- prompt and answer
def row_format(row: dict) -> str:
    for fmt in FORMATS:
        if _fields_present(row, fmt):
            return fmt
    raise LabError(f"Row has no known form (fields: {', '.join(map(repr, row))}).",
                   "Alpaca needs 'instruction'+'output', chat needs 'messages', else 'prompt'+'completion'.")


def prompt_and_answer(row: dict) -> tuple[list[dict], str]:
    """(prompt as chat messages, reference answer) for any row form.

    Alpaca: one user turn = instruction, plus a blank line and the input when there is one.
    Messages: every turn before the last, and the last (assistant) turn's content.
    Prompt/completion: the prompt as a user turn (or the prompt's messages), and the completion.
    """
    fmt = row_format(row)
    if fmt == "alpaca":
        user = row["instruction"].strip()
        extra = (row.get("input") or "").strip()
        return [{"role": "user", "content": f"{user}\n\n{extra}" if extra else user}], row["output"]
    if fmt == "messages":
        msgs = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        return msgs[:-1], msgs[-1]["content"]
    p, c = row["prompt"], row["completion"]
    if isinstance(p, list):
        answer = "".join(m["content"] for m in c if m.get("role") == "assistant") if isinstance(c, list) else str(c)
        return [{"role": m["role"], "content": m["content"]} for m in p], answer
    return [{"role": "user", "content": p}], c


def render_example(tokenizer, row: dict) -> tuple[str, str]:
    """(prompt text, answer text) of a training example: prompt + answer is the full training text.
    The answer part ends with what closes the turn (the template's end-of-turn, or EOS)."""
    messages, answer = prompt_and_answer(row)
    prompt = build_chat_prompt(tokenizer, messages)
    if has_chat_template(tokenizer):
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)
        if full.startswith(prompt):
            return prompt, full[len(prompt):]
        return prompt, full  # templates that render the prompt differently alone: show the whole text
    return prompt, answer + (tokenizer.eos_token or "")


def training_example(tokenizer, row: dict) -> dict:
    """The row in TRL's prompt/completion form: conversational when the tokenizer has a chat
    template (TRL applies it and trains on the completion only), else Alpaca text."""
    messages, answer = prompt_and_answer(row)
    if has_chat_template(tokenizer):
        return {"prompt": messages, "completion": [{"role": "assistant", "content": answer}]}
    return {"prompt": alpaca_prompt(messages), "completion": answer}


# --------------------------------------------------------------------------- preview
@dataclass
class PreviewRow:
    line: int
    prompt: str
    answer: str
    prompt_tokens: int
    answer_tokens: int


def preview(tokenizer, rows: list[dict], lines: list[int] | None = None, n: int = 3) -> list[PreviewRow]:
    """The formatted training text of the first `n` rows with their token lengths."""
    lines = lines or list(range(1, len(rows) + 1))
    out = []
    for row, line in zip(rows[:n], lines[:n], strict=True):
        prompt, answer = render_example(tokenizer, row)
        out.append(PreviewRow(line, prompt, answer, _count(tokenizer, prompt), _count(tokenizer, answer)))
    return out


def token_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Token count of each row's full training text (prompt + answer)."""
    return [_count(tokenizer, "".join(render_example(tokenizer, r))) for r in rows]


def check_max_length(tokenizer, rows: list[dict], max_length: int) -> str | None:
    """Rows whose prompt alone fills `max_length` keep no answer token after truncation: nothing to learn
    from them. All rows: a LabError saying what max length would do; some: a warning (None when none)."""
    prompts = [_count(tokenizer, render_example(tokenizer, r)[0]) for r in rows]
    if not prompts:
        return None
    cut = sum(p >= max_length for p in prompts)
    if cut == len(prompts):
        full = sorted(token_lengths(tokenizer, rows))
        raise LabError(
            f"Max length {max_length} leaves no answer token to learn from: every prompt is at least that long "
            f"(the shortest is {min(prompts)} tokens with its template), and the loss is on the answer only.",
            f"Use a max length of {full[len(full) // 2]} or more (the median row, prompt + answer) — "
            f"{full[-1]} keeps every row whole.")
    if cut:
        return (f"{cut} of {len(prompts)} rows have a prompt of {max_length}+ tokens: truncated to max length, "
                "they keep no answer token and teach nothing. Raise max length to use them.")
    return None


def length_stats(lengths: list[int], max_length: int | None = None) -> dict:
    if not lengths:
        return {"rows": 0}
    s = sorted(lengths)
    stats = {"rows": len(s), "min": s[0], "mean": round(sum(s) / len(s), 1), "median": s[len(s) // 2],
             "max": s[-1], "total": sum(s)}
    if max_length:
        stats["truncated"] = sum(x > max_length for x in s)
    return stats


def _count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])
