"""KTO: offline optimisation from unpaired thumbs (prompt, completion, label).

Thumbs-up replies are pushed above, thumbs-down below, a reference point estimated from
mismatched (prompt, completion) pairs in the same batch, hence ``batch_size`` ≥ 2
(``policy.kto.loss: apo_zero_unpaired`` fixes it at 0 and skips the two passes that estimate
it). The reference policy is the base model with the LoRA adapter switched off. Rows: the
``export_kto`` dataset. ``sft_weight`` adds the desirable replies' negative log-likelihood (see
``KTOWithNLL``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from rlhf_persona.config import PolicyConfig
from rlhf_persona.policy.algorithms import ALGORITHMS, Algorithm, OfflineSection

if TYPE_CHECKING:
    import torch


class KTOSection(OfflineSection):
    """``policy.kto``: the keys only KTO reads."""

    legacy_names = {"kto_loss": "loss"}

    loss: Literal["kto", "apo_zero_unpaired"] = Field(
        "kto",
        description="KTO's loss type in TRL. kto: liked replies pushed above, disliked below a "
        "reference point z estimated from mismatched pairs in each batch (clamped at 0); "
        "apo_zero_unpaired: the same loss with z fixed at 0, without the two forward passes "
        "that estimate it (~45% less time per step on CPU).",
    )


def format_row(row: dict, tokenizer) -> dict:
    from rlhf_persona.policy.common import as_reply, chat_prompt

    return {
        "prompt": chat_prompt(tokenizer, row["prompt"], row.get("system")),
        "completion": as_reply(row["completion"]),
        "label": bool(row["label"]),
    }


@functools.cache
def kto_with_nll():
    """``KTOWithNLL``, built on first use (TRL's trainers are slow to import)."""
    import torch
    from trl import KTOTrainer

    class KTOWithNLL(KTOTrainer):
        """KTO plus ``sft_weight`` × the mean per-token NLL of the desirable completions
        (what TRL's DPO calls its ``sft`` loss; TRL's KTO has none).

        Why: KTO's desirable loss 1 − σ(β(r − z)) stops pulling once a liked reply has become
        far less likely than under the reference (the sigmoid saturates), and TRL clamps the
        reference point z at 0, so lowering every reply still pays on the undesirable side.
        Measured on the quickstart: adapters slid into word salad with liked replies 30 nats
        less likely than under the base. The NLL's gradient does not vanish there. It reuses the
        policy's own forward pass (the only one with gradients; the KL and reference passes run
        under ``no_grad``), so it costs nothing.
        """

        def __init__(self, *args, sft_weight: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.sft_weight = sft_weight

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self.sft_weight:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            seen = []

            def keep_policy_pass(_module, _args, kwargs, outputs):
                if torch.is_grad_enabled():
                    seen.append((kwargs["labels"], outputs.log_probs))

            hook = model.register_forward_hook(keep_policy_pass, with_kwargs=True)
            try:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                hook.remove()
            if not seen:  # evaluation runs every pass under no_grad: KTO's loss alone
                return result
            ((labels, log_probs),) = seen
            nll = desirable_nll(labels, log_probs, inputs["label"])
            mode = "train" if model.training else "eval"
            self._metrics[mode]["nll/chosen"].append(nll.item())
            if return_outputs:
                return result[0] + self.sft_weight * nll, result[1]
            return result + self.sft_weight * nll

    return KTOWithNLL


def desirable_nll(labels: torch.Tensor, log_probs: torch.Tensor, desirable) -> torch.Tensor:
    """Mean negative log-likelihood per completion token of the desirable rows (0 without any).

    ``labels``: input ids with -100 outside the completion; ``log_probs``: the per-token log-probs
    of the next token (one position shorter, possibly with virtual tokens in front)."""
    import torch

    mask = labels[:, 1:] != -100
    token_logps = log_probs[:, -mask.size(1) :]
    rows = torch.as_tensor(desirable, dtype=torch.bool, device=token_logps.device)
    chosen_mask = mask[rows]
    if not chosen_mask.any():
        return token_logps.sum() * 0.0  # keeps the graph; no liked reply in this batch
    return -token_logps[rows][chosen_mask].mean()


def train(model, tokenizer, dataset, cfg: PolicyConfig, output_dir: Path, *, device, bf16, seed,
          **_):  # fmt: skip
    from trl import KTOConfig

    from rlhf_persona.policy.common import lora_config, run_trainer, trainer_args

    own = cfg.section("kto")
    # Thumbs are often unbalanced; weigh the rarer side up (KTO paper's recommended range).
    n_up = sum(dataset["label"])
    n_down = len(dataset) - n_up
    args = KTOConfig(
        **trainer_args(cfg, output_dir, device, bf16, seed),
        loss_type=own.loss,
        beta=cfg.beta,
        max_length=cfg.max_length,
        desirable_weight=max(1.0, n_down / max(n_up, 1)),
        undesirable_weight=max(1.0, n_up / max(n_down, 1)),
    )
    trainer = kto_with_nll()(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
        sft_weight=own.sft_weight,
    )
    return run_trainer(trainer, anchor_base=own.reference == "base")


ALGORITHMS.register("kto", Algorithm("kto", "thumbs", KTOSection, ("prompt", "completion", "label"),
                                     format_row, train))  # fmt: skip
