"""Predictions from a model's architecture alone: weights at a precision (weights), training memory (training),
inference memory (inference), GPUs and the fit verdict (gpus), the largest setting that fits (inverse) and
LoRA parameter counts equal to peft's (lora)."""
