"""SFT warm start: supervised fine-tuning of the adapter on replies users liked.

Rows are (prompt, completion) pairs built from the feedback: the ``chosen`` side of preference
pairs or thumbs-up KTO rows. The loss covers the reply tokens only. Used before DPO/KTO/GRPO/RLOO
when ``policy.warm_start_steps`` > 0; the following algorithm then keeps training the same adapter
against the warm-started one as its reference. (The embedded policies' own SFT, which teaches a
freshly built model to chat at all, lives in ``rlhf_persona.models``.)
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.common import as_reply, chat_prompt, lora_config, run_trainer, trainer_args


def liked_rows(dataset: Dataset) -> Dataset:
    """(prompt, completion, system?) rows of liked replies from preference or KTO rows."""
    cols = dataset.column_names
    if "chosen" in cols:
        keep = [c for c in ("prompt", "chosen", "system") if c in cols]
        return dataset.select_columns(keep).rename_column("chosen", "completion")
    if "label" in cols:
        keep = [c for c in ("prompt", "completion", "system") if c in cols]
        return dataset.filter(lambda row: bool(row["label"])).select_columns(keep)
    return dataset.select([])  # online data (prompts only): nothing to imitate


def format_row(row: dict, tokenizer) -> dict:
    return {
        "prompt": chat_prompt(tokenizer, row["prompt"], row.get("system")),
        "completion": as_reply(row["completion"]),
    }


def train(
    model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed, **_
) -> SFTTrainer:
    args = SFTConfig(
        **trainer_args(cfg, output_dir, device, bf16, seed),
        max_length=cfg.max_length,
        completion_only_loss=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
    )
    return run_trainer(trainer)
