"""One shared encoder, one scalar reward head per segment, trainable by TRL's RewardTrainer.

The backbone's one-output head becomes ``SegmentHeads``: ``r_s(x) = w_g·h(x) + b_g + d_s·h(x) +
c_s``, a *global* head shared by every segment plus a per-segment residual that starts at zero.
The global head sees every pair, so it is the pooled model a segment it never saw falls back to;
each residual learns only what its segment does differently. Index −1 selects the global head.

``SegmentConditionedModel`` is the thin ``PreTrainedModel`` that RewardTrainer trains: it takes
``segment_index`` next to ``input_ids`` (``SegmentCollator`` adds it to TRL's batches) and hands
it to the heads for the one forward pass. No custom training loop is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from trl.trainer.reward_trainer import DataCollatorForPreference

from rlhf_persona.reward.backbone import score_head


class SegmentHeads(nn.Module):
    """Global linear head + zero-initialised per-segment residual heads."""

    def __init__(self, global_head: nn.Linear, n_segments: int):
        super().__init__()
        self.global_head = global_head
        self.residual = nn.Linear(global_head.in_features, n_segments)
        nn.init.zeros_(self.residual.weight)
        nn.init.zeros_(self.residual.bias)
        self.segment_index: torch.Tensor | None = None  # set per forward by the wrapper

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.global_head(hidden)
        idx = self.segment_index
        if idx is None:
            return out
        delta = self.residual(hidden)  # [B, K] or [B, T, K]
        shape = (-1,) + (1,) * (delta.dim() - 1)
        pick = idx.clamp(min=0).view(shape).expand(*delta.shape[:-1], 1)
        chosen = delta.gather(-1, pick) * (idx >= 0).view(shape).to(delta.dtype)
        return out + chosen


class SegmentConditionedModel(PreTrainedModel):
    """A one-output sequence classifier whose head depends on ``segment_index`` per row."""

    base_model_prefix = "backbone"
    _supports_sdpa = True

    def __init__(self, backbone: PreTrainedModel, n_segments: int):
        super().__init__(backbone.config)
        self.backbone = backbone
        parent, attr, head = score_head(backbone)
        self.heads = SegmentHeads(head, n_segments)
        setattr(parent, attr, self.heads)

    def forward(self, input_ids=None, attention_mask=None, segment_index=None, **kwargs):
        self.heads.segment_index = segment_index
        try:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            self.heads.segment_index = None

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()


@dataclass
class SegmentCollator:
    """TRL's preference collator, plus ``segment_index`` for the chosen and rejected halves."""

    pad_token_id: int

    def __post_init__(self):
        self.base = DataCollatorForPreference(pad_token_id=self.pad_token_id)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.base(examples)
        idx = torch.tensor([int(e["segment_index"]) for e in examples], dtype=torch.long)
        batch["segment_index"] = torch.cat([idx, idx])
        return batch
