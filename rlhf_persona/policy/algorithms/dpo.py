"""DPO: offline preference optimisation from pairs (prompt, chosen, rejected).

The loss raises the policy's log-likelihood ratio (vs the reference = the base model with the
LoRA adapter switched off) of the chosen reply over the rejected one; ``beta`` sets how far from
the base it may go. Rows: the ``export_preference`` dataset.
"""

from __future__ import annotations

from pathlib import Path

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, OfflineSection


class DPOSection(OfflineSection):
    """``policy.dpo``: the keys only DPO reads (beta, steps, LoRA... are in ``policy``)."""


def format_row(row: dict, tokenizer) -> dict:
    from rlhf_persona.policy.common import as_reply, chat_prompt

    return {
        "prompt": chat_prompt(tokenizer, row["prompt"], row.get("system")),
        "chosen": as_reply(row["chosen"]),
        "rejected": as_reply(row["rejected"]),
    }


def train(model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed,
          **_):  # fmt: skip
    from trl import DPOConfig, DPOTrainer

    from rlhf_persona.policy.common import lora_config, run_trainer, trainer_args

    own = cfg.section("dpo")
    args = DPOConfig(
        **trainer_args(cfg, output_dir, device, bf16, seed),
        beta=cfg.beta,
        max_length=cfg.max_length,
        # TRL's "sft" term: the chosen replies' mean per-token NLL (see DPOSection.sft_weight).
        loss_type=["sigmoid", "sft"] if own.sft_weight else ["sigmoid"],
        loss_weights=[1.0, own.sft_weight] if own.sft_weight else None,
    )
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
    )
    return run_trainer(trainer, anchor_base=own.reference == "base")


ALGORITHMS.register("dpo", Algorithm("dpo", "pairs", DPOSection, ("prompt", "chosen", "rejected"),
                                     format_row, train))  # fmt: skip
