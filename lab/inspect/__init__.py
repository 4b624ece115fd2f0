"""Measurements of a really loaded model: the bytes it holds (measure), the loading lab's report (load_report),
quality (quality) and 4-bit quantization up close (quantization)."""
