"""The four conditioning strategies: ``global``, ``prefix``, ``heads``, ``lora``.

=========  ================================================================  ===================
strategy   how the segment enters                                            global fallback
=========  ================================================================  ===================
global     not at all: one model of the pooled feedback (the baseline)       (is global)
prefix     the segment card's persona text is prepended to the prompt        no persona text
heads      shared encoder, a scalar head per segment (global head + residual) the global head
lora       a global model first, then one LoRA adapter (+ head) per segment   adapters disabled
=========  ================================================================  ===================

All four train through TRL's ``RewardTrainer``: global and prefix on the plain backbone, heads on
``SegmentConditionedModel`` (segment ids enter through the collator), lora on a PEFT model with
one named adapter per segment, activated in turn for a RewardTrainer run on that segment's pairs.
"""

from __future__ import annotations

import contextlib

import numpy as np

from rlhf_persona.errors import UserError
from rlhf_persona.reward.backbone import score_head
from rlhf_persona.reward.data import PairData
from rlhf_persona.reward.heads import SegmentCollator, SegmentConditionedModel
from rlhf_persona.reward.model import RewardModel, register


@register("global")
class GlobalReward(RewardModel):
    """No conditioning: the pooled-feedback baseline every report shows beside the others."""

    conditioned = False


@register("prefix")
class PrefixReward(RewardModel):
    """The segment card's persona text joins the input (prompt, reply) as a part of its own.

    With a frozen, cached encoder bottom the persona goes through the frozen layers on its own
    and meets the reply's tokens in the trainable top layer (so replies are encoded once for
    every segment); without one, it is simply part of the input sequence. A share
    ``prefix_dropout`` of training rows is shown without persona text, so the same model also
    scores persona-free input: the fallback for segments it was not trained on.
    """

    def _personas(self) -> dict[int, str]:
        personas = super()._personas()
        missing = [s for s in self.segments_ if not personas.get(s)]
        if missing:
            self._decide(f"no persona text for segment(s) {missing}: using 'Segment N.' labels")
        return {s: personas.get(s) or f"Segment {s}." for s in self.segments_}

    def _encode(self, prompts, replies, index, train: bool) -> list[list[int]]:
        ids = super()._encode(prompts, replies, index, train)
        index = np.asarray(index)
        if train and self.cfg.prefix_dropout > 0:
            rng = np.random.default_rng([self.seed, 7])
            index = np.where(rng.random(len(index)) < self.cfg.prefix_dropout, -1, index)
        limit = max(16, self.cfg.max_length * 3 // 8)  # 48 of 128: the persona's last clauses
        suffix = {
            i: self.format_.encode_persona(self.tokenizer_, self.personas_[s], limit)
            for i, s in enumerate(self.segments_)
        }
        return [row + suffix[i] if i >= 0 else row for row, i in zip(ids, index, strict=True)]


@register("heads")
class HeadsReward(RewardModel):
    """Shared encoder, one scalar head per segment on top of a shared global head."""

    def _extend(self) -> None:
        self.model_ = SegmentConditionedModel(self.model_, len(self.segments_))

    def _collator(self):
        return SegmentCollator(pad_token_id=self.tokenizer_.pad_token_id)

    def _row_index(self, index: np.ndarray):
        return index

    def _forward(self, input_ids, attention_mask, index):
        out = self.model_(input_ids=input_ids, attention_mask=attention_mask, segment_index=index)
        return out.logits[:, 0]

    def _backbone_config(self):
        return self.model_.backbone.config


@register("lora")
class LoraReward(RewardModel):
    """A global reward model, then one LoRA adapter and head copy per segment.

    Phase 1 trains the backbone's trainable layers and head on every pair (exactly the global
    strategy). Phase 2 freezes that model, adds one adapter per segment (LoRA on the trainable
    layers' linear maps, plus a private copy of the head) and trains each on its segment's pairs
    only. Disabling the adapters gives back the phase-1 model: the global fallback.

    ``base``: an already fitted ``global`` reward model (same encoder and config) to start from
    instead of phase 1 — how adapters are added to a global reward model already in use.
    """

    def __init__(self, *args, base: RewardModel | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.base = base

    def adapter_name(self, index: int) -> str:
        return f"segment_{self.segments_[index]}"

    def _train(self, pairs: PairData, run) -> list[dict]:
        # phase 1: the global model on every pair (or a copy of the given one)
        phases = super()._train(pairs, run) if self.base is None else [self._copy_base()]
        self._finish_structure()
        index = self._index_array(pairs.segment)
        epochs = self.cfg.lora_epochs or self.cfg.epochs
        for i in range(len(self.segments_)):
            rows = np.flatnonzero(index == i)
            self.model_.set_adapter(self.adapter_name(i))
            data = self._rows(pairs.subset(rows), index[rows])
            phases.append(self._phase(self.model_, data, run, self.adapter_name(i), epochs))
        return phases

    def _copy_base(self) -> dict:
        """Phase 1 taken from ``base``: its weights, after checking it is compatible."""
        import copy

        base = self.base
        same = {"freeze_layers", "cache_frozen", "max_length"}
        if (
            getattr(base, "strategy", None) != "global"
            or not hasattr(base, "model_")
            or base.encoder_spec != self.encoder_spec
            or any(getattr(base.cfg, k) != getattr(self.cfg, k) for k in same)
        ):
            raise UserError(
                "lora base: expected a fitted global reward model with the same encoder and "
                f"reward.{', reward.'.join(sorted(same))}"
            )
        self.model_.load_state_dict(copy.deepcopy(base.model_.state_dict()))
        return {"phase": "lora/base", "pairs": 0, "steps": 0, "train_s": 0.0, "step_s": 0.0,
                "step_times": [], "loss": None, "final_accuracy": None, "from": "base"}  # fmt: skip

    def _targets(self) -> list[str]:
        """Full names of the linear maps to adapt: those in still-trainable layers."""
        import torch

        wanted = set(self.cfg.lora_target_modules)
        names = [
            name
            for name, module in self.model_.named_modules()
            if isinstance(module, torch.nn.Linear)
            and name.rsplit(".", 1)[-1] in wanted
            and module.weight.requires_grad
            and module.out_features > 1
        ]
        if not names:
            raise UserError(
                f"reward.strategy=lora: no trainable linear layer named {sorted(wanted)} (with "
                f"reward.freeze_layers={self.cfg.freeze_layers} of "
                f"{self.backbone_['total_layers']}); lower freeze_layers or set "
                "reward.lora_target_modules"
            )
        return names

    def _finish_structure(self) -> None:
        from peft import LoraConfig, get_peft_model

        _, head_name, _ = score_head(self.model_)
        config = LoraConfig(
            r=self.cfg.lora_r,
            lora_alpha=self.cfg.lora_alpha,
            lora_dropout=self.cfg.lora_dropout,
            target_modules=self._targets(),
            modules_to_save=[head_name],
            bias="none",
        )
        model = get_peft_model(self.model_, config, adapter_name=self.adapter_name(0))
        for i in range(1, len(self.segments_)):
            model.add_adapter(self.adapter_name(i), config)
        self.model_ = model

    def _group(self, index: int):
        return None if index < 0 else self.adapter_name(index)

    def _activate(self, group):
        if group is None:
            return self.model_.disable_adapter()
        self.model_.set_adapter(group)
        return contextlib.nullcontext()

    def _backbone_config(self):
        return self.model_.get_base_model().config
