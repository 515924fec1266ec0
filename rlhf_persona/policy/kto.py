"""KTO: offline optimisation from unpaired thumbs (prompt, completion, label).

Thumbs-up replies are pushed above, thumbs-down below, a reference point estimated from
mismatched (prompt, completion) pairs in the same batch, hence ``batch_size`` ≥ 2. The reference
policy is the base model with the LoRA adapter switched off. Rows: the ``export_kto`` dataset.
"""

from __future__ import annotations

from pathlib import Path

from trl import KTOConfig, KTOTrainer

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.common import as_reply, chat_prompt, lora_config, run_trainer, trainer_args

COLUMNS = ("prompt", "completion", "label")


def format_row(row: dict, tokenizer) -> dict:
    return {
        "prompt": chat_prompt(tokenizer, row["prompt"], row.get("system")),
        "completion": as_reply(row["completion"]),
        "label": bool(row["label"]),
    }


def train(
    model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed, **_
) -> KTOTrainer:
    # Thumbs are often unbalanced; weigh the rarer side up (KTO paper's recommended range).
    n_up = sum(dataset["label"])
    n_down = len(dataset) - n_up
    args = KTOConfig(
        **trainer_args(cfg, output_dir, device, bf16, seed),
        beta=cfg.beta,
        max_length=cfg.max_length,
        desirable_weight=max(1.0, n_down / max(n_up, 1)),
        undesirable_weight=max(1.0, n_up / max(n_down, 1)),
    )
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
    )
    return run_trainer(trainer, anchor_base=cfg.reference == "base")
