"""Adapters made by other tools load in the playground and the evaluation: TRL, Axolotl, LLaMA-Factory and Unsloth
all save plain peft folders, with files of their own, `adapter_model.bin`, `checkpoint-N/` nesting, unknown config
keys, and a base_model_name_or_path that is a Hub id, a path on another machine or a pre-quantized copy's id.
The folders are fabricated from one real adapter, in each tool's layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lab.generate.adapters import base_mismatch, inspect_adapter
from lab.generate.compare import SamplingSettings, side_by_side
from lab.models.loading import load_model
from tests.fixtures_playground import make_adapter

HUB_ID = "lab-tests/tiny-llama"
PROMPT = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_model_dir) -> Path:
    """The chosen base: a local copy of the tiny model whose lab_source.json names its Hub id."""
    folder = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("bases") / "tiny-hub-base")
    (folder / "lab_source.json").write_text(json.dumps({"hub_id": HUB_ID}))
    return folder


@pytest.fixture(scope="module")
def original(tmp_path_factory, base) -> Path:
    return make_adapter(base, tmp_path_factory.mktemp("original") / "adapter", seed=7)


def fabricate(
    original: Path,
    folder: Path,
    base_name: str,
    weights: str = "safetensors",
    extra_config: dict | None = None,
    extra_files: tuple[str, ...] = (),
) -> Path:
    folder.mkdir(parents=True)
    config = json.loads((original / "adapter_config.json").read_text())
    config.update({"base_model_name_or_path": base_name, **(extra_config or {})})
    (folder / "adapter_config.json").write_text(json.dumps(config))
    if weights == "bin":  # older Axolotl / peft: a torch pickle of the same tensors
        from safetensors.torch import load_file

        torch.save(load_file(original / "adapter_model.safetensors"), folder / "adapter_model.bin")
    else:
        shutil.copy(original / "adapter_model.safetensors", folder)
    for name in extra_files:
        (folder / name).write_text("{}")
    return folder


@pytest.fixture(scope="module")
def tool_folders(tmp_path_factory, original) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tools")
    # TRL: output_dir with checkpoint-N/ folders and, after save_model, the final adapter at the top.
    trl = root / "trl-out"
    for n in (9, 10):
        fabricate(original, trl / f"checkpoint-{n}", HUB_ID, extra_files=("trainer_state.json", "training_args.bin"))
    fabricate(original, trl / "final-at-top", HUB_ID)
    for f in (trl / "final-at-top").iterdir():
        shutil.move(str(f), trl / f.name)
    (trl / "final-at-top").rmdir()
    (trl / "README.md").write_text("---\nlibrary_name: transformers\ntags: [trl, sft]\n---\n# TRL card\n")
    # TRL mid-training (or crashed): only checkpoints; the newest is checkpoint-10, not checkpoint-9.
    trl_running = root / "trl-running"
    fabricate(original, trl_running / "checkpoint-9", HUB_ID)
    fabricate(original, trl_running / "checkpoint-10", HUB_ID)
    (trl_running / "checkpoint-10" / "adapter_config.json").write_text(
        (trl_running / "checkpoint-10" / "adapter_config.json").read_text().replace('"r": 4', '"r": 4, "marker": 10'))
    return {
        "trl": trl,
        "trl-running": trl_running,
        # Axolotl: adapter_model.bin, base recorded as a path on the machine that trained it
        "axolotl": fabricate(original, root / "axolotl-out", "/home/someone/models/tiny-hub-base", weights="bin",
                             extra_files=("config.json", "training_args.bin")),
        # LLaMA-Factory: its logs next to the adapter, and a config key this peft version does not know
        "llamafactory": fabricate(original, root / "saves-lora-sft", HUB_ID, extra_config={"a_future_peft_option": 1},
                                  extra_files=("trainer_log.jsonl", "all_results.json", "train_results.json")),
        # Unsloth: trained on unsloth's pre-quantized copy of the base
        "unsloth": fabricate(original, root / "lora_model", "unsloth/tiny-llama-bnb-4bit", extra_files=("README.md",)),
    }


@pytest.mark.parametrize("tool", ["trl", "trl-running", "axolotl", "llamafactory", "unsloth"])
def test_other_tools_folders_load_and_answer_like_the_original(tool, tool_folders, original, base):
    loaded = load_model(str(base))
    info = inspect_adapter(str(tool_folders[tool]))
    if tool == "trl-running":
        assert info.path.name == "checkpoint-10" and info.config.get("marker") == 10 and "checkpoint-10" in info.name
    assert base_mismatch(info, loaded.source) is None  # Hub id, other machine's path, pre-quantized copy: same base
    reference = inspect_adapter(str(original), name="reference")
    settings = SamplingSettings(max_new_tokens=6)
    r = side_by_side(loaded, [reference, info], PROMPT, settings)
    assert r.columns[info.name].text == r.columns["reference"].text  # same weights, whatever the layout


def test_foreign_base_is_flagged_by_the_playground_check_and_the_evaluate_cli(tool_folders, tmp_path, base, capsys):
    from lab.cli import main

    foreign = shutil.copytree(tool_folders["llamafactory"], tmp_path / "llama-8b-lora")
    config = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": "meta-llama/Llama-3.1-8B"})
    )
    warning = base_mismatch(inspect_adapter(str(foreign)), load_model(str(base)).source)
    assert warning and "meta-llama/Llama-3.1-8B" in warning and "tiny-hub-base" in warning

    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps({"instruction": "Name a colour.", "output": "blue"}) + "\n")
    rc = main(
        [
            "evaluate",
            "--model",
            str(base),
            "--adapter",
            str(foreign),
            "--dataset",
            str(data),
            "--max-new-tokens",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert any("meta-llama/Llama-3.1-8B" in w for w in out["warnings"])


def test_a_folder_without_any_adapter_is_refused(tmp_path):
    from lab.errors import LabError

    (tmp_path / "out" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-3" / "trainer_state.json").write_text("{}")
    with pytest.raises(LabError, match="nor a checkpoint-N/ folder"):
        inspect_adapter(str(tmp_path / "out"))
