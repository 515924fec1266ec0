"""Sentence embeddings from an encoder (MiniLM by default): mean pooling + L2 normalisation,
the recipe all-MiniLM-L6-v2 was trained with (see its ``1_Pooling/config.json``)."""

from __future__ import annotations


def embed_texts(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 256):
    """Unit-length sentence vectors, a float tensor [len(texts), hidden]."""
    import torch

    chunks = []
    model.eval()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(model.device)
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        chunks.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    return torch.cat(chunks) if chunks else torch.empty(0)
