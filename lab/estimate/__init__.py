"""Predictions from a model's architecture alone: weights at a precision (weights), LoRA parameter counts equal to
peft's (lora); the training step and generation simulated on fake tensors (simulate, with tracker, recipe,
fake_quant and compose; check runs the same step on real tensors) and the formula that explains it (training,
inference, explain); GPUs and the one fit verdict (gpus), several GPUs (parallel), the largest setting that fits
(inverse), and the code that runs the simulated step (snippet)."""
