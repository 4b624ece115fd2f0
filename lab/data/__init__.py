"""Training and evaluation data: bundled sets, uploaded files, their formats and the training text (datasets)."""
