"""End to end on the real embedded SmolLM2-135M-Instruct."""

import pytest

from lab.data.prompts import generate_text
from lab.models.loading import load_model

pytestmark = pytest.mark.embedded


def test_embedded_model_knows_paris():
    loaded = load_model("embedded", "fp32")
    answer = generate_text(loaded.model, loaded.tokenizer, "What is the capital of France?", max_new_tokens=16)
    assert "Paris" in answer
