"""The one prompt builder: the exact text a model sees before its answer.

Training formats its data with it (`lab.data.datasets`), the playground's columns and the
evaluation ask with it, and the loading lab's greedy answers too — so a tokenizer prompts the
same way everywhere, and an adapter is asked the way it was taught:

- with a chat template (instruct models): the template renders the turns and opens the
  assistant's turn;
- without one: the Alpaca template (what training falls back to; TRL's plain prompt/completion
  text needs *some* frame around the instruction);
- `use_chat_template=False`: the turns' text as it is, for a base model to continue (the
  evaluation uses it to send a prompt that is already rendered).
"""

from __future__ import annotations

ALPACA_HEADER = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def alpaca_prompt(messages: list[dict]) -> str:
    """The Alpaca template for tokenizers without a chat template. System turns go in the header;
    earlier assistant turns become earlier responses."""
    system = "\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = [system or ALPACA_HEADER]
    for m in messages:
        if m["role"] == "user":
            parts.append(f"### Instruction:\n{m['content']}")
        elif m["role"] == "assistant":
            parts.append(f"### Response:\n{m['content']}")
    return "\n\n".join(parts) + "\n\n### Response:\n"


def build_chat_prompt(tokenizer, messages: list[dict], use_chat_template: bool = True) -> str:
    """The text the model sees for a conversation (a list of {"role", "content"} messages), ending
    where its answer begins. See the module docstring for the three cases."""
    if not use_chat_template:
        return "\n".join(m["content"] for m in messages)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return alpaca_prompt(messages)


def generate_text(model, tokenizer, prompt: str, max_new_tokens: int = 64, use_chat_template: bool = True) -> str:
    """Greedy completion of one user prompt; returns only the new text."""
    # torch: 1.1 s to import; imported where used, not with this module
    import torch

    text = build_chat_prompt(tokenizer, [{"role": "user", "content": prompt}], use_chat_template)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
