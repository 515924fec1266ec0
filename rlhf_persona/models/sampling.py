"""Sample chat replies from a causal LM with a chat template (used by the CLI and benchmarks)."""

from __future__ import annotations


def chat_prompts(tokenizer, prompts: list[str], system: str | None = None) -> list[str]:
    """Render single-turn user prompts (plus an optional system message) for generation."""
    head = [{"role": "system", "content": system}] if system else []
    return [
        tokenizer.apply_chat_template(
            [*head, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]


def sample_replies(
    model,
    tokenizer,
    prompts: list[str],
    *,
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    system: str | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[list[str]]:
    """``n`` replies per prompt; ``temperature=0`` is greedy. Returns one list per prompt."""
    import torch

    torch.manual_seed(seed)
    texts = [t for t in chat_prompts(tokenizer, prompts, system) for _ in range(n)]
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so replies start aligned
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    greedy = {"do_sample": False}
    replies: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **(sampling if temperature > 0 else greedy),
            )
        new = out[:, batch["input_ids"].shape[1] :]
        replies += tokenizer.batch_decode(new, skip_special_tokens=True)
    return [[r.strip() for r in replies[i * n : (i + 1) * n]] for i in range(len(prompts))]
