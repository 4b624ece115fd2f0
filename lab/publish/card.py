"""The model card (README.md) of a run folder and of its merged export, written with huggingface_hub's
ModelCard/ModelCardData from our Jinja template (card_template.md), so the Hub parses its metadata.

Everything in a card comes from the run folder: lab_run.json (settings, log history, measured peak memory
and times), evaluation.json (the latest playground/CLI evaluation of this adapter, base vs adapter) and
hub.json (where it was pushed). Any of them changing rewrites the card: training end, an evaluation, a push.

`base_model` metadata is always a Hub id or absent, never this machine's path: the embedded model is
HuggingFaceTB/SmolLM2-135M-Instruct; a local folder is what its lab_source.json, its config's
`_name_or_path` or its Hugging Face cache path says it came from; else nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from lab.data.datasets import alpaca_prompt, dataset_file, list_datasets, load_rows, prompt_and_answer
from lab.errors import LabError
from lab.files import write_json_atomic
from lab.models.catalog import EMBEDDED_HUB_ID, EMBEDDED_LICENSE
from lab.models.sources import folder_hub_id, is_hub_id
from lab.paths import RUN_FILE
from lab.publish.curve import draw_loss_curve
from lab.units import fmt_bytes

CARD_FILE = "README.md"
CURVE_FILE = "loss.png"
EVAL_FILE = "evaluation.json"
HUB_FILE = "hub.json"
TEMPLATE = Path(__file__).with_name("card_template.md")


# --------------------------------------------------------------------------- where the base came from
@dataclass
class BaseOrigin:
    hub_id: str | None  # a Hub model id, or None when unknown
    license: str | None = None
    note: str | None = None  # e.g. the lab's embedded copy is a dequantized GGUF


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _card_license(readme: Path | str | None) -> str | None:
    """The `license` of a model card on disk (a downloaded Hub model's README.md), if any."""
    if not readme or not Path(readme).is_file():
        return None
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict().get("license")
    except Exception:  # a README that is not a card: no license to report
        return None


def folder_origin(folder: Path) -> BaseOrigin:
    """What a local model folder says it came from (see lab.models.sources.folder_hub_id), its license (its
    own README.md card, as a Hub download has) and whether the lab converted it."""
    marker = _read_json(folder / "lab_source.json")
    hub_id = folder_hub_id(folder)
    note = None
    if marker.get("converted_from"):
        note = (f"The lab's copy of {hub_id or 'the base'} is dequantized from the GGUF file "
                f"`{Path(marker['converted_from']).name}`, so its weights differ slightly from the Hub's originals; "
                "the adapter loads on either.")
    return BaseOrigin(hub_id, _card_license(folder / CARD_FILE), note)


def base_origin(base: dict) -> BaseOrigin:
    """The origin of a run's base, from lab_run.json's `base_model` record ({spec, kind, pretrained_id, ...})."""

    kind, path = base.get("kind"), base.get("pretrained_id")
    if kind == "hub" and is_hub_id(path):
        # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, CARD_FILE)
        return BaseOrigin(path, _card_license(cached if isinstance(cached, str) else None))
    origin = folder_origin(Path(path)) if path and Path(path).is_dir() else BaseOrigin(None)
    if kind == "embedded":
        origin.hub_id, origin.license = EMBEDDED_HUB_ID, origin.license or EMBEDDED_LICENSE
    return origin


def dataset_hub_id(record: dict) -> str | None:
    """The dataset's Hub id when it was one (bundled and local datasets have none)."""

    source = (record.get("dataset") or {}).get("source") or ""
    try:
        return source if dataset_file(source) is None and is_hub_id(source) else None
    except LabError:
        return None


# --------------------------------------------------------------------------- card pieces
def _seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def example_messages(record: dict) -> list[dict]:
    """A prompt for the snippet: the dataset's first test (else train) row, else a greeting. A Hub dataset is not
    read again (it may be large, and the card is rewritten offline too)."""

    source = (record.get("dataset") or {}).get("source") or ""
    for split in () if dataset_hub_id(record) else ("test", "train"):
        try:
            rows = load_rows(source, split, "skip")
        except (LabError, OSError):
            continue
        if rows:
            return prompt_and_answer(rows[0])[0]
    return [{"role": "user", "content": "Hello! What can you do?"}]


def prompt_lines(folder: Path, messages: list[dict]) -> list[str]:
    """Snippet lines that build `prompt` the way training rendered it: the chat template, or the Alpaca text."""
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    if (folder / "chat_template.jinja").is_file() or tokenizer_config.get("chat_template"):
        return [f"messages = {messages!r}",
                "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)"]

    return [f"prompt = {alpaca_prompt(messages)!r}  # the Alpaca template training used (no chat template)"]


def load_snippet(record: dict, origin: BaseOrigin, where: str, folder: Path, merged: bool = False) -> str:
    """Python that loads the adapter (or the merged model) and answers one prompt; it runs as written."""
    base = record.get("base_model") or {}
    base_id = origin.hub_id or base.get("pretrained_id") or base.get("spec") or "<the base model>"
    base_comment = "" if origin.hub_id else "  # not on the Hub: the local folder it was trained from"
    if merged:
        lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 f"model_id = {where!r}",
                 "tokenizer = AutoTokenizer.from_pretrained(model_id)",
                 "model = AutoModelForCausalLM.from_pretrained(model_id)"]
    else:
        lines = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                 f"base_id = {base_id!r}{base_comment}",
                 f"adapter_id = {where!r}",
                 "tokenizer = AutoTokenizer.from_pretrained(adapter_id)  # the tokenizer the run trained with",
                 "model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_id), adapter_id)"]
        if record.get("bnb_config"):
            lines.insert(-1, f"# trained on a {record.get('precision_label', '4-bit')} base; for 4-bit inference pass "
                             "quantization_config=BitsAndBytesConfig(...) to from_pretrained")
    lines += prompt_lines(folder, example_messages(record))
    lines += ['inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)',
              "output = model.generate(**inputs, max_new_tokens=64, do_sample=False)",
              'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    return "\n".join(lines)


def settings_rows(record: dict) -> list[tuple[str, str]]:
    c, lora, data = record.get("config", {}), record.get("lora", {}), record.get("dataset", {})
    processes = record.get("processes", 1)
    trainable, total = lora.get("trainable_params"), lora.get("total_params")
    share = f" of {total:,} ({100 * trainable / total:.2f}%)" if trainable and total else ""
    steps = (record.get("summary") or {}).get("steps")
    extras = [
        name
        for name, on in (
            ("rsLoRA", c.get("use_rslora")),
            ("DoRA", c.get("use_dora")),
            (f"LoRA+ ratio {c.get('loraplus_ratio')}", (c.get("loraplus_ratio") or 0) > 0),
        )
        if on
    ]
    return [
        ("base precision", str(record.get("precision_label") or record.get("precision"))),
        (
            "LoRA",
            f"r={c.get('r')}, alpha={c.get('alpha')}, dropout={c.get('dropout')}" + "".join(f", {e}" for e in extras),
        ),
        ("target modules", ", ".join(lora.get("target_modules") or [str(c.get("targets"))])),
        ("trainable parameters", f"{trainable:,}{share}" if trainable else "–"),
        (
            "dataset",
            f"{data.get('name')} ({data.get('format')}, {data.get('train_rows')} training rows, "
            f"{data.get('test_rows')} test rows)",
        ),
        ("steps", f"{steps if steps is not None else '–'} (max steps {c.get('max_steps')}, epochs {c.get('epochs')})"),
        (
            "batch",
            f"{c.get('batch_size')} per process x {c.get('grad_accum')} accumulation x {processes} process(es) = "
            f"{(c.get('batch_size') or 0) * (c.get('grad_accum') or 0) * processes} rows per step",
        ),
        (
            "optimizer",
            f"{c.get('optimizer')}, learning rate {c.get('learning_rate')}, {c.get('scheduler')} schedule, "
            f"warmup ratio {c.get('warmup_ratio')}, weight decay {c.get('weight_decay')}",
        ),
        ("max length", f"{c.get('max_length')} tokens"),
        ("gradient checkpointing", "on" if c.get("gradient_checkpointing") else "off"),
        ("seed", str(c.get("seed"))),
    ]


def loss_points(record: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    history = record.get("log_history") or []
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    return train, evals


def loss_text(record: dict) -> str:
    train, evals = loss_points(record)
    if not train:
        return "No loss was logged."
    text = f"Train loss {train[0][1]:.4f} at step {train[0][0]} → {train[-1][1]:.4f} at step {train[-1][0]}"
    if evals:
        rows = (record.get("dataset") or {}).get("eval_rows_used")
        text += f"; eval loss {evals[-1][1]:.4f} at step {evals[-1][0]}" + (f" on {rows} test rows" if rows else "")
    stop = (record.get("summary") or {}).get("stop_reason")
    if record.get("status") == "stopped":
        text += f". Stopped on request ({stop})" if stop else ". Stopped on request"
    return text + "."


def evaluation_view(entry: dict | None) -> dict | None:
    """The card's evaluation table from evaluation.json."""
    if not entry:
        return None
    acc = entry.get("metric") == "accuracy"
    columns = (["accuracy", "loss", "perplexity"] if acc else ["loss", "perplexity"])
    rows = []
    for label, m in (("base", entry["base"]), ("this adapter", entry["adapter"])):
        cells = ([f"{m['accuracy']:.1%} ({m['correct']}/{m['examples']})"] if acc else [])
        rows.append([label, *cells, f"{m['loss']:.3f}", f"{m['perplexity']:.2f}"])
    when = time.strftime("%Y-%m-%d", time.localtime(entry.get("finished", time.time())))
    summary = (f"Greedy answers on {entry['examples']} test examples of `{entry['dataset']}` ({entry['metric']}), "
               f"base {entry.get('base_model')} at {entry.get('precision')}, with and without this adapter "
               f"(evaluated {when} by the lab's playground/`lab evaluate`).")
    return {"summary": summary, "columns": columns, "rows": rows}


def _measured(record: dict) -> dict:
    s, d = record.get("summary") or {}, record.get("durations") or {}
    device, processes = record.get("device", "?"), record.get("processes", 1)
    cpu = device == "cpu"
    note = " (peak resident set size of the training process, libraries included)" if cpu else \
        " (torch.cuda.max_memory_allocated)"
    if processes > 1:
        note += f", rank 0 of {processes} processes"
    tps = s.get("tokens_per_second")
    return {
        "device_text": f"{'a CPU' if cpu else 'a CUDA GPU'}" + (f" ({processes} processes)" if processes > 1 else ""),
        "peak_memory": fmt_bytes(s.get("peak_memory_bytes")) if s.get("peak_memory_bytes") else "–",
        "peak_note": note,
        "train_time": _seconds(d.get("train_seconds")),
        "total_time": _seconds(d.get("total_seconds")),
        "speed_text": f", {tps:.0f} tokens/s" if tps else "",
    }


# --------------------------------------------------------------------------- the cards
def read_record(run_dir: Path) -> dict:
    record = _read_json(Path(run_dir) / RUN_FILE)
    if not record:
        raise LabError(f"{run_dir} has no readable {RUN_FILE}: it is not a lab run folder.",
                       "Pick a folder made by `python -m lab train` (or the Training page).")
    return record


def card_data(record: dict, origin: BaseOrigin, merged: bool = False):
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import ModelCardData

    method = "qlora" if record.get("bnb_config") else "lora"
    dataset = dataset_hub_id(record)
    return ModelCardData(
        base_model=origin.hub_id,
        library_name="transformers" if merged else "peft",
        pipeline_tag="text-generation",
        license=origin.license,
        datasets=[dataset] if dataset else None,
        tags=[method, "trl", "sft", *(["merged"] if merged else [])],
    )


def reproduce_command(record: dict) -> str:
    """The recorded command, with this machine's interpreter path shortened to `python`."""
    argv = list(record.get("command") or [])
    if argv and Path(argv[0]).name.startswith("python"):
        argv[0] = "python"
    return shlex.join(argv)


def build_card(run_dir: Path, merged_dir: Path | None = None, repo_id: str | None = None):
    """The ModelCard of a run folder (or, with `merged_dir`, of its merged export); the snippet loads it from
    `repo_id`, else from where hub.json says it was pushed, else from the local folder."""
    # huggingface_hub reads HF_HOME at import: not before lab.paths.configure_hub_cache has set it
    from huggingface_hub import ModelCard

    run_dir = Path(run_dir)
    record = read_record(run_dir)
    origin = base_origin(record.get("base_model") or {})
    hub = _read_json(run_dir / HUB_FILE)
    merged = merged_dir is not None
    folder = Path(merged_dir) if merged else run_dir
    where = repo_id or (hub.get("merged_repo_id") if merged else hub.get("repo_id")) or str(folder)
    data = record.get("dataset") or {}
    dataset_id = dataset_hub_id(record)
    bundled = data.get("name") in list_datasets() and data.get("source") == data.get("name")
    base_link = f"[{origin.hub_id}](https://huggingface.co/{origin.hub_id})" if origin.hub_id else \
        f"`{(record.get('base_model') or {}).get('display_name') or 'the base model'}` (a local model)"
    return ModelCard.from_template(
        card_data(record, origin, merged), template_path=str(TEMPLATE), merged=merged,
        title=(f"{record.get('name', run_dir.name)} (merged)" if merged else record.get("name", run_dir.name)),
        method="QLoRA" if record.get("bnb_config") else "LoRA", base_link=base_link, base_note=origin.note,
        dataset_text=f"[{dataset_id}](https://huggingface.co/datasets/{dataset_id})" if dataset_id else
        f"the `{data.get('name')}` dataset ({data.get('train_rows')} training rows, "
        + ("bundled with QLoRA Lab)" if bundled else "a local file)"),
        trainable=f"{(record.get('lora') or {}).get('trainable_params') or 0:,}",
        merged_dtype=record.get("compute_dtype"), snippet=load_snippet(record, origin, where, folder, merged),
        curve_file=CURVE_FILE, loss_text=loss_text(record), settings=settings_rows(record),
        evaluation=None if merged else evaluation_view(_read_json(run_dir / EVAL_FILE)),
        command=reproduce_command(record),
        versions=", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items() if v),
        **_measured(record),
    )


def _save_card(card, path: Path) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    try:
        card.save(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise LabError(
            f"Could not write the model card {path}: {e.strerror or e}.", "Free disk space or check permissions."
        ) from e
    return path


def draw_curve(run_dir: Path, record: dict, folder: Path | None = None) -> Path | None:

    train, evals = loss_points(record)
    if not train and not evals:
        return None
    return draw_loss_curve((folder or run_dir) / CURVE_FILE, train, evals, title=f"Training loss: {record.get('name')}")


def point_adapter_at_hub(run_dir: Path, hub_id: str | None) -> None:
    """adapter_config.json's base_model_name_or_path: the base's Hub id instead of this machine's path, so the
    adapter loads elsewhere (AutoPeftModelForCausalLM reads it). The local path stays in lab_run.json."""
    path = Path(run_dir) / "adapter_config.json"
    config = _read_json(path)
    if not hub_id or not config or config.get("base_model_name_or_path") == hub_id:
        return
    config["base_model_name_or_path"] = hub_id
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_run_card(run_dir: Path, repo_id: str | None = None) -> Path:
    """loss.png and README.md in a run folder (and the adapter pointed at its base's Hub id). Returns the card."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    point_adapter_at_hub(run_dir, base_origin(record.get("base_model") or {}).hub_id)
    draw_curve(run_dir, record)
    return _save_card(build_card(run_dir, repo_id=repo_id), run_dir / CARD_FILE)


def write_merged_card(run_dir: Path, merged_dir: Path, repo_id: str | None = None) -> Path:
    """The merged export's own card (and a copy of the loss curve next to it)."""
    merged_dir = Path(merged_dir)
    draw_curve(Path(run_dir), read_record(run_dir), merged_dir)
    return _save_card(build_card(run_dir, merged_dir, repo_id), merged_dir / CARD_FILE)


# --------------------------------------------------------------------------- records that refresh the card
def _update_json(path: Path, changes: dict) -> None:
    write_json_atomic(path, {**_read_json(path), **changes})


def record_evaluation(run_dir: Path, entry: dict) -> Path:
    """Keep the latest evaluation of this run's adapter (base vs adapter metrics) and refresh its card."""
    path = Path(run_dir) / EVAL_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry, indent=2, default=str))
    os.replace(tmp, path)
    return write_run_card(run_dir)


def record_push(run_dir: Path, repo_id: str, url: str, private: bool, merged: bool) -> None:
    prefix = "merged_" if merged else ""
    _update_json(Path(run_dir) / HUB_FILE, {f"{prefix}repo_id": repo_id, f"{prefix}url": url,
                                            f"{prefix}private": private, f"{prefix}pushed": time.time()})
