"""Measurements of a really loaded model: the loading lab's report (load_report), quality (quality) and 4-bit
quantization up close (quantization). The bytes a loaded model holds: lab.models.measure."""
