"""One recipe (issue 17.4): a training setting has one name, one default, one bound and one help text, whether a
run (TrainConfig: the Training page, `lab train`) or the memory question (TrainingSettings: the calculator,
`lab memory`, the simulation) reads it; old CLI spellings still parse, hidden."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest
from transformers import AutoConfig

from lab.cli import build_parser
from lab.errors import LabError
from lab.estimate.training import TrainingSettings
from lab.recipe import GPU, SETTINGS
from lab.training.config import TrainConfig, default_config

RUN = {f.name: f for f in fields(TrainConfig)}
QUESTION = {f.name: f for f in fields(TrainingSettings)}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_a_shared_setting_has_one_name_help_and_bound(name):
    assert name in RUN and name in QUESTION, "one name in both dataclasses"
    assert RUN[name].metadata == QUESTION[name].metadata == SETTINGS[name].metadata()
    gpu_default = GPU.get(name, SETTINGS[name].default)
    if name != "alpha":  # the memory question's alpha is None (2·r): memory does not depend on it
        assert QUESTION[name].default == gpu_default == getattr(default_config("cuda"), name)
    assert RUN[name].default == SETTINGS[name].default == getattr(default_config("cpu"), name)


def test_the_calculator_defaults_are_a_gpu_run():
    """What the calculator and `lab memory` ask about by default is what `lab train` runs on a GPU."""
    run, asked = default_config("cuda").memory_settings("cuda"), TrainingSettings()
    assert run.method == asked.method == "qlora" and run.precision == GPU["precision"]  # None asks for nf4-dq
    assert all(getattr(run, name) == getattr(asked, name) for name in SETTINGS if name != "alpha")


def test_one_dropout_bound_everywhere():
    from lab.estimate.simulate import resolve_recipe
    from lab.models.reader import read_architecture

    top = SETTINGS["dropout"].max
    with pytest.raises(LabError, match=f"dropout=0.95 is above its maximum {top}"):
        replace(default_config("cpu"), dropout=0.95).validate("cpu")
    with pytest.raises(LabError, match=f"lora_dropout must be between 0 and {top}, got 0.95"):
        resolve_recipe(read_architecture("SmolLM2-135M"), TrainingSettings(dropout=0.95))
    resolve_recipe(read_architecture("SmolLM2-135M"), TrainingSettings(dropout=top))  # the bound itself is allowed


def _parse(*argv):
    parser, _ = build_parser()
    return parser.parse_args(list(argv))


def test_cli_names_follow_the_recipe_and_old_spellings_stay_hidden(capsys):
    new = _parse("memory", "--train", "qlora", "--max-length", "256", "--no-gradient-checkpointing", "--use-dora")
    old = _parse("memory", "--train", "qlora", "--seq-len", "256", "--grad-checkpointing", "--dora")
    assert (new.max_length, new.gradient_checkpointing, new.use_dora) == (256, False, True)
    assert (old.max_length, old.gradient_checkpointing, old.use_dora) == (256, True, True)
    plain = _parse("memory", "--train", "qlora")
    assert (plain.max_length, plain.gradient_checkpointing, plain.batch_size) == (
        TrainingSettings().max_length, TrainingSettings().gradient_checkpointing, TrainingSettings().batch_size)
    assert _parse("lora", "--r", "8", "--dora", "--rslora").use_dora is True
    assert _parse("train", "--use-dora").use_dora and _parse("train", "--dora").use_dora
    with pytest.raises(SystemExit):
        _parse("memory", "--help")
    shown = capsys.readouterr().out
    assert "--max-length" in shown and "--use-dora" in shown
    assert "--seq-len" not in shown and "--dora " not in shown and "--grad-checkpointing" not in shown


def test_depth_bound_follows_the_server_limit(monkeypatch):
    from lab.models.architecture import check_depth

    deep = AutoConfig.for_model("llama", num_hidden_layers=1500)
    with pytest.raises(LabError, match="num_hidden_layers=1,500"):
        check_depth(deep, "deep.json")
    monkeypatch.setenv("QLORA_LAB_MAX_LAYERS", "2000")
    check_depth(deep, "deep.json")  # raised by the instructor: the reader follows


def test_predict_run_asks_about_the_run_through_the_recipe_table(monkeypatch):
    """The time model's question about a run (lab.estimate.plan.predict_run) is the run's own settings, built
    through lab.recipe like the Training page's simulation: no field retyped, an older record's gap at its default."""
    import lab.estimate.plan as P

    asked = []

    def stop(arch, settings, device):
        asked.append((settings, device))
        raise LabError("stop here")

    monkeypatch.setattr(P, "simulate", stop)
    cfg = replace(default_config("cpu"), precision="nf4", r=8, alpha=3.0, batch_size=3, max_length=64, use_dora=True,
                  targets="q_proj,v_proj", gradient_checkpointing=True, dropout=0.1)
    with pytest.raises(LabError, match="stop here"):
        P.predict_run(cfg.to_dict(), "cpu")
    assert asked == [(cfg.memory_settings("cpu"), "cpu")]
    s = asked[0][0]
    assert (s.method, s.r, s.max_length, s.use_dora, s.adapter_dtype, s.dtype) == ("qlora", 8, 64, True, "fp32",
                                                                                     "compute")
    old = TrainingSettings.for_run({"precision": "fp32"}, "cuda")
    assert all(getattr(old, name) == SETTINGS[name].default for name in SETTINGS)
    assert (old.method, old.dtype, old.adapter_dtype) == ("lora", "auto", "auto")
