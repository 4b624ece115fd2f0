"""'Copy as code': the script that runs the step the calculator simulated, with transformers, peft and TRL.

It names the model by its Hub id (`_name_or_path` of the config: the catalog's configs carry theirs),
loads it as the settings say, applies the same recipe the simulation applied (`lab.estimate.recipe`)
and hands it to TRL's SFTTrainer — runnable as printed, given a dataset.
"""

from __future__ import annotations

from lab.estimate.lora import estimate_lora
from lab.estimate.recipe import Recipe
from lab.models.architecture import Architecture
from lab.models.precision import bnb_config_code

TORCH_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}


def model_id(arch: Architecture) -> str:
    """The Hub id (or path) transformers would load this architecture's weights from."""
    return str(arch.config.get("_name_or_path") or arch.name)


def training_code(arch: Architecture, recipe: Recipe) -> str:
    dtype = TORCH_NAMES[str(recipe.dtype)]
    lines = ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig"]
    if recipe.method != "full":
        lines.append("from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training")
    lines += ["from trl import SFTConfig, SFTTrainer", "", f'model_id = "{model_id(arch)}"']
    if recipe.quantized:
        compute = recipe.autocast or recipe.dtype
        lines += [f"bnb_config = {bnb_config_code(recipe.precision, 'cuda', compute=compute)}",
                  "model = AutoModelForCausalLM.from_pretrained(model_id, quantization_config=bnb_config, "
                  f'dtype=torch.{dtype}, attn_implementation="{recipe.attn}", device_map={{"": 0}})']
        if recipe.kbit_upcast:
            lines.append(f"model = prepare_model_for_kbit_training(model, use_gradient_checkpointing="
                         f"{recipe.gradient_checkpointing})")
    else:
        lines.append(f'model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.{dtype}, '
                     f'attn_implementation="{recipe.attn}", device_map={{"": 0}})')
    if recipe.method != "full":
        all_linear = recipe.targets == "all-linear"
        lora = estimate_lora(arch, recipe.r, recipe.alpha, "all-linear" if all_linear else list(recipe.targets),
                             use_dora=recipe.use_dora)
        lines += ["", f"model = get_peft_model(model, {lora.lora_config_code(recipe.dropout, all_linear)})"]
    half = {"bfloat16": "bf16=True", "float16": "fp16=True"}.get(TORCH_NAMES.get(str(recipe.autocast), ""), "")
    args = [f"per_device_train_batch_size={recipe.batch_size}", f"max_length={recipe.max_length}",
            f"gradient_checkpointing={recipe.gradient_checkpointing}", f'optim="{recipe.optimizer}"', half,
            'output_dir="runs/calculator"']
    lines += ["", "tokenizer = AutoTokenizer.from_pretrained(model_id)",
              f"args = SFTConfig({', '.join(a for a in args if a)})",
              "trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)"
              "  # dataset: yours",
              "trainer.train()",
              "print(torch.cuda.max_memory_allocated())  # compare with the calculator's simulated peak"]
    return "\n".join(lines)
