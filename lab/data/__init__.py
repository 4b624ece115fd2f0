"""Training and evaluation data: bundled sets, uploaded files, their formats and the training text (datasets),
and the exact prompt text training and generation share (prompts)."""
