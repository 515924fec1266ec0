"""The reward-model interface every conditioning strategy implements, and the registry.

    rm = build_reward_model(cfg.reward, "embedded:minilm", cards)   # strategy from the config
    rm.fit(export_preference(store, segments), run=run)
    r = rm.score(segment_ids, prompts, replies)                      # np.ndarray [n]
    rm.save("runs/x/reward"); rm = load_reward_model("runs/x/reward")

Strategies register themselves by name (``@register("heads")``) and differ only in a few hooks:
how a row is encoded (``prefix`` prepends the segment card's persona text), how the backbone is
extended (``heads`` adds per-segment heads, ``lora`` per-segment adapters) and how a batch is
scored. Training, scoring, segment checks, saving and loading live here, once.

A segment id the model was not trained on is scored by the strategy's *global* part (the shared
head, the adapter-free model, the persona-free input) with a logged warning, or is an error when
``reward.unseen_segment: error``: never a silently wrong score.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rlhf_persona.config import RewardConfig
from rlhf_persona.errors import UserError
from rlhf_persona.metadata import read_meta, stamp
from rlhf_persona.reward import STRATEGIES
from rlhf_persona.reward.backbone import load_backbone, prepare_backbone
from rlhf_persona.reward.data import NO_SEGMENT, PairData, pairs_from
from rlhf_persona.reward.text import InputFormat
from rlhf_persona.reward.training import preference_rows, train_phase

log = logging.getLogger(__name__)

FORMAT = "rlhf_persona.reward"
FORMAT_VERSION = 1
META_FILE = "reward_model.json"
WEIGHTS_FILE = "weights.safetensors"


def register(name: str):
    """Class decorator: make a strategy available as ``reward.strategy: NAME``."""

    def add(cls):
        cls.strategy = name
        STRATEGIES.register(name, cls)
        return cls

    return add


def _card_fields(card) -> tuple[int, str]:
    """(segment_id, persona_text) of a SegmentCard or of its dict form."""
    get = card.get if isinstance(card, dict) else lambda k, d=None: getattr(card, k, d)
    if get("segment_id") is None:
        raise UserError(f"segment card without segment_id: {card!r}")
    return int(get("segment_id")), str(get("persona_text", "") or "")


class RewardModel:
    """r(segment, prompt, reply): a scalar reward, trained from preference pairs.

    Args:
        cfg: the ``reward:`` config section (strategy, lengths, steps, rates, freezing...).
        encoder_spec: backbone model spec (``embedded:minilm``, a hub id or a path).
        cards: segment cards (``SegmentCard`` or dicts with ``segment_id``, ``persona_text``).
        seed: seeds the head initialisation, data order and persona dropout.
        cache_dir: where embedded models are built.
    """

    strategy: ClassVar[str] = ""
    conditioned: ClassVar[bool] = True

    def __init__(
        self,
        cfg: RewardConfig | None = None,
        encoder_spec: str = "embedded:minilm",
        cards: Sequence | None = None,
        *,
        seed: int = 0,
        cache_dir: str | Path | None = None,
    ):
        self.cfg = cfg if cfg is not None else RewardConfig(strategy=self.strategy)
        self.encoder_spec = encoder_spec
        self.cards = list(cards) if cards is not None else None
        self.seed = seed
        self.cache_dir = cache_dir

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, data, run=None) -> RewardModel:
        """Train on preference pairs (see ``data.pairs_from`` for accepted inputs)."""
        pairs = pairs_from(data)
        self.decisions_: list[str] = []
        self.segments_ = self._trained_segments(pairs)
        self.personas_ = self._personas()
        torch.manual_seed(self.seed)
        start = time.perf_counter()
        self._load_backbone()
        self._extend()
        phases = self._train(pairs, run)
        self.step_times_ = [t for p in phases for t in p["step_times"]]
        self.stats_ = self._summary(pairs, phases, time.perf_counter() - start)
        if run is not None:
            run.log({k: v for k, v in self.stats_.items() if k != "phases"}, stage="reward")
        log.info("reward %s: %s", self.strategy, {k: self.stats_[k] for k in ("pairs", "train_s")})
        return self

    def _trained_segments(self, pairs: PairData) -> list[int]:
        """Segment ids with pairs; segments known from the cards but without pairs are a
        logged fallback decision (or an error with ``unseen_segment: error``)."""
        if not self.conditioned:
            return []
        counts = pairs.counts()
        with_pairs = sorted(s for s in counts if s != NO_SEGMENT)
        if not with_pairs:
            raise UserError(
                f"reward.strategy={self.strategy} needs segment ids, but no preference pair has "
                "a segment_id: segment the users first, or use reward.strategy=global"
            )
        if counts.get(NO_SEGMENT):
            self._decide(f"{counts[NO_SEGMENT]} pairs have no segment: they train the global part")
        known = {_card_fields(c)[0] for c in self.cards or []}
        empty = sorted(known - set(with_pairs))
        if empty and self.cfg.unseen_segment == "error":
            raise UserError(
                f"preference export has no pairs for segment(s) {empty} (pairs per segment: "
                f"{counts}); collect feedback from those users, or set "
                "reward.unseen_segment=global to score them with the global fallback"
            )
        if empty:
            self._decide(f"segment(s) {empty} have no pairs: they score with the global fallback")
        return with_pairs

    def _decide(self, message: str) -> None:
        log.warning("reward %s: %s", self.strategy, message)
        self.decisions_.append(message)

    def _personas(self) -> dict[int, str]:
        return {sid: text for sid, text in map(_card_fields, self.cards or [])}

    def _load_backbone(self, folder: Path | None = None) -> None:
        spec = str(folder) if folder is not None else self.encoder_spec
        self.model_, self.tokenizer_ = load_backbone(spec, self.cache_dir, folder is not None)
        if folder is None:
            self.format_ = InputFormat.for_tokenizer(self.tokenizer_)
        split = self.tokenizer_.cls_token_id if self.format_.text_pair else None
        self.backbone_ = prepare_backbone(
            self.model_, self.cfg.freeze_layers, self.cfg.cache_frozen, split,
            self.cfg.freeze_top_kv, self.cfg.top_kv_rank,
        )  # fmt: skip

    def _extend(self) -> None:
        """Add the strategy's parts to the backbone (heads, adapters). Default: nothing."""

    def _train(self, pairs: PairData, run) -> list[dict]:
        """Default: one RewardTrainer phase on every pair."""
        index = self._index_array(pairs.segment)
        rows = self._rows(pairs, index)
        return [self._phase(self.model_, rows, run, "all", self.cfg.epochs)]

    def _phase(self, model, rows, run, name: str, epochs: float) -> dict:
        return train_phase(
            model, self.tokenizer_, rows, self.cfg, epochs=epochs, seed=self.seed, run=run,
            phase=f"{self.strategy}/{name}", collator=self._collator(),
        )  # fmt: skip

    def _collator(self):
        return None  # TRL's DataCollatorForPreference

    def _rows(self, pairs: PairData, index: np.ndarray):
        """Pre-tokenized training rows for RewardTrainer."""
        chosen = self._encode(pairs.prompts, pairs.chosen, index, train=True)
        rejected = self._encode(pairs.rejected_prompts, pairs.rejected, index, train=True)
        margin = pairs.margin * self.cfg.margin_scale if self.cfg.margin_scale > 0 else None
        return preference_rows(chosen, rejected, margin, self._row_index(index))

    def _row_index(self, index: np.ndarray):
        return None  # only the heads strategy feeds segment indices to the model

    def _encode(self, prompts, replies, index: np.ndarray, train: bool) -> list[list[int]]:
        """Token ids per row; ``index`` (head index per row) for strategies that need it."""
        return self.format_.encode(self.tokenizer_, prompts, replies, self.cfg.max_length)

    def _summary(self, pairs: PairData, phases: list[dict], seconds: float) -> dict:
        steps = sum(p["steps"] for p in phases)
        step_times = [t for p in phases for t in p["step_times"][1:]]
        return {
            "strategy": self.strategy,
            "encoder": self.encoder_spec,
            "pairs": len(pairs),
            "pairs_per_segment": {str(k): v for k, v in pairs.counts().items()},
            "segments": self.segments_,
            "steps": steps,
            "train_s": seconds,
            "step_s": float(np.median(step_times)) if step_times else phases[0]["step_s"],
            "backbone": self.backbone_,
            "export": pairs.report,
            # thumbs with no opposite thumb on the same prompt cannot form a pair
            "unusable_thumbs": int(
                pairs.report.get("dropped", {}).get("thumb_without_opposite", 0)
            ),
            "decisions": self.decisions_,
            "phases": [{k: v for k, v in p.items() if k != "step_times"} for p in phases],
        }

    # --- scoring ------------------------------------------------------------------------------

    def _index_array(self, segment_ids) -> np.ndarray:
        """Head index per row (position in ``segments_``), −1 for the global part."""
        lookup = {s: i for i, s in enumerate(self.segments_)}
        return np.array([lookup.get(int(s), -1) for s in segment_ids], dtype=np.int64)

    def segment_index(self, segment_ids, n: int) -> np.ndarray:
        """Head index per scored row; unseen segment ids fall back (logged) or raise."""
        if segment_ids is None or np.isscalar(segment_ids):
            segment_ids = [segment_ids] * n
        if len(segment_ids) != n:
            raise UserError(f"score: {len(segment_ids)} segment ids for {n} rows")
        if not self.conditioned:
            return np.full(n, -1, dtype=np.int64)
        ids = [NO_SEGMENT if s is None else int(s) for s in segment_ids]
        index = self._index_array(ids)
        unseen = sorted({s for s, i in zip(ids, index, strict=True) if i < 0})
        if unseen and self.cfg.unseen_segment == "error":
            raise UserError(
                f"segment id(s) {unseen} were not in this reward model's training data "
                f"(trained segments: {self.segments_}); set reward.unseen_segment=global to "
                "score them with the global fallback"
            )
        if unseen:
            log.warning(
                "reward %s: segment id(s) %s not trained on (trained: %s): scored with the "
                "global fallback", self.strategy, unseen, self.segments_,
            )  # fmt: skip
        return index

    def score(
        self, segment_ids, prompts: Sequence, replies: Sequence, batch_size: int = 64
    ) -> np.ndarray:
        """Rewards for (segment, prompt, reply) rows; ``segment_ids`` may be one id for all."""
        if not hasattr(self, "model_"):
            raise UserError("reward model is not fitted: call fit() or load_reward_model()")
        if len(prompts) != len(replies):
            raise UserError(f"score: {len(prompts)} prompts but {len(replies)} replies")
        from rlhf_persona.reward.data import message_text

        prompts = [message_text(p, "user") for p in prompts]
        replies = [message_text(r, "assistant") for r in replies]
        index = self.segment_index(segment_ids, len(prompts))
        ids = self._encode(prompts, replies, index, train=False)
        return self._score_ids(ids, index, batch_size)

    def _group(self, index: int):
        """Rows of one group are scored with the same model state (lora: one adapter)."""
        return None

    def _activate(self, group) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def _forward(self, input_ids, attention_mask, index) -> torch.Tensor:
        return self.model_(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]

    @torch.no_grad()  # not inference_mode: cached frozen states are reused by training later
    def _score_ids(self, ids: list[list[int]], index: np.ndarray, batch_size: int) -> np.ndarray:
        keys = [(int(i), tuple(x)) for i, x in zip(index, ids, strict=True)]
        unique = list(dict.fromkeys(keys))  # each distinct row is scored once
        groups: dict = {}
        for key in sorted(unique, key=lambda k: (len(k[1]), k)):  # similar lengths batch well
            groups.setdefault(self._group(key[0]), []).append(key)
        self.model_.eval()
        device = next(self.model_.parameters()).device
        pad = self.tokenizer_.pad_token_id
        results: dict = {}
        for group, members in groups.items():
            with self._activate(group):
                for start in range(0, len(members), batch_size):
                    chunk = members[start : start + batch_size]
                    width = max(len(k[1]) for k in chunk)
                    input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(chunk), width), dtype=torch.long)
                    for r, (_, row) in enumerate(chunk):
                        input_ids[r, : len(row)] = torch.tensor(row)
                        mask[r, : len(row)] = 1
                    seg = torch.tensor([k[0] for k in chunk], dtype=torch.long)
                    out = self._forward(input_ids.to(device), mask.to(device), seg.to(device))
                    results.update(zip(chunk, out.float().cpu().tolist(), strict=True))
        return np.array([results[k] for k in keys], dtype=np.float64)

    # --- persistence --------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``reward_model.json``, the backbone's config + tokenizer, all weights, a model
        card (``README.md``) and, where the strategy allows, ``hf/``: the same model as a plain
        ``AutoModelForSequenceClassification`` (see ``reward.portable``)."""
        from safetensors.torch import save_model

        if not hasattr(self, "model_"):
            raise UserError("reward model is not fitted: nothing to save")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            **stamp(FORMAT, FORMAT_VERSION),
            "strategy": self.strategy,
            "encoder_spec": self.encoder_spec,
            "seed": self.seed,
            "config": self.cfg.model_dump(mode="json"),
            "segments": self.segments_,
            "personas": {str(k): v for k, v in self.personas_.items()},
            "input_format": self.format_.to_dict(),
            "stats": getattr(self, "stats_", {}),
        }
        (out / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        self._backbone_config().save_pretrained(out / "backbone")
        self.tokenizer_.save_pretrained(out / "backbone")
        save_model(self.model_, str(out / WEIGHTS_FILE))
        from rlhf_persona.reward.portable import export_classifier, write_card

        write_card(self, out, hf=export_classifier(self, out) is not None)
        return out

    def _backbone_config(self):
        return self.model_.config

    @classmethod
    def _restore(cls, folder: Path, meta: dict) -> RewardModel:
        from safetensors.torch import load_model

        obj = cls(
            RewardConfig.model_validate(meta["config"]), meta["encoder_spec"], seed=meta["seed"]
        )
        obj.segments_ = [int(s) for s in meta["segments"]]
        obj.personas_ = {int(k): v for k, v in meta["personas"].items()}
        obj.format_ = InputFormat(**meta["input_format"])
        obj.stats_ = meta.get("stats", {})
        obj.decisions_ = list(obj.stats_.get("decisions", []))
        obj.step_times_ = []
        obj._load_backbone(folder / "backbone")
        obj._extend()
        obj._finish_structure()
        load_model(obj.model_, str(folder / WEIGHTS_FILE), strict=True)
        obj.model_.eval()
        return obj

    def _finish_structure(self) -> None:
        """Structure added during training after the first phase (lora: the adapters)."""


def build_reward_model(
    reward_cfg: RewardConfig,
    encoder_spec: str = "embedded:minilm",
    cards: Sequence | None = None,
    **kwargs,
) -> RewardModel:
    """The strategy named by ``reward_cfg.strategy``, unfitted."""
    cls = STRATEGIES.get(reward_cfg.strategy)
    return cls(reward_cfg, encoder_spec, cards, **kwargs)


def load_reward_model(directory: str | Path) -> RewardModel:
    """Load a reward model written by ``RewardModel.save``."""
    folder = Path(directory)
    meta_path = folder / META_FILE
    meta = read_meta(meta_path, "reward model", FORMAT, FORMAT_VERSION, "retrain the reward model")
    if meta.get("strategy") not in STRATEGIES:
        raise UserError(f"{meta_path}: {STRATEGIES.unknown(meta.get('strategy'))}")
    return STRATEGIES.get(meta["strategy"])._restore(folder, meta)


def strategy_names() -> list[str]:
    """Names of the registered strategies (the built-in four and any registered since)."""
    return STRATEGIES.names()
