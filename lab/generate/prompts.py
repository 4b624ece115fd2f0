"""Text generation helpers shared by the CLI, the pages and the tests."""

from __future__ import annotations

import torch


def build_prompt(tokenizer, prompt: str, use_chat_template: bool = True) -> str:
    """The exact text the model sees: the chat template applied when the tokenizer has one."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


@torch.inference_mode()
def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, use_chat_template: bool = True) -> str:
    """Greedy completion of one prompt; returns only the new text."""
    text = build_prompt(tokenizer, prompt, use_chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def build_chat_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True) -> str:
    """The text the model sees for a conversation (a list of {"role", "content"} messages).

    With a chat template, the template renders the turns and opens the assistant's turn. Without
    one, the turns are joined as plain text, so a base model simply continues it.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)
