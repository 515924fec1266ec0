"""One training phase = one TRL ``RewardTrainer`` run on pre-tokenized preference rows.

Every strategy trains through this function: the rows carry ``chosen_ids`` / ``rejected_ids``
(and ``margin``, and ``segment_index`` for the heads strategy), so RewardTrainer skips its own
text processing — which would append an EOS token a BERT tokenizer does not have.

CPU facts (docs/design.md): bf16 is up to 16× slower on this CPU and gradient checkpointing only
costs time at this size, so both are off; ``use_cpu`` is set when no GPU is present.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

log = logging.getLogger(__name__)

# Parameters trained at ``head_learning_rate``: reward heads, the pooler, LoRA adapters and the
# low-rank key/value corrections (all start at or near zero and need the larger rate).
HEAD_PARTS = ("classifier", "score", "heads", "pooler", "lora_", "modules_to_save", "kv_delta")


class StepTimer(TrainerCallback):
    """Wall seconds of every optimizer step."""

    def __init__(self):
        self.times: list[float] = []
        self._t = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._t = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._t)


class BarOnly(ProgressCallback):
    """The trainer's step bar (count, rate, ETA), named, without a printed dict per logging
    step (the numbers go to the tracking run instead)."""

    def __init__(self, desc: str):
        super().__init__()
        self.desc = desc

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.set_description(self.desc)
            self.training_bar.unit = "step"

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def step_seconds(times: list[float]) -> float:
    """Typical step time: the median, skipping the first step (allocations, caches)."""
    t = times[1:] if len(times) > 1 else times
    return float(np.median(t)) if t else float("nan")


def make_optimizer(model, cfg) -> torch.optim.Optimizer:
    """AdamW with the encoder at ``learning_rate`` and heads / pooler / LoRA at
    ``head_learning_rate`` (few steps on CPU: a fresh head needs the larger rate)."""
    head, body = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (head if any(p in name for p in HEAD_PARTS) else body).append(param)
    groups = [{"params": head, "lr": cfg.head_learning_rate}]
    if body:
        groups.append({"params": body, "lr": cfg.learning_rate})
    # fused: the same kernel Trainer's default optimizer ("adamw_torch_fused") uses
    return torch.optim.AdamW(groups, weight_decay=0.0, fused=True)


def trainer_args(cfg, *, n_rows: int, epochs: float, seed: int, remove_unused: bool):
    """TRL ``RewardConfig`` for one phase (no checkpoints; logs go through ``trainer_logger``)."""
    from trl import RewardConfig

    steps = math.ceil(n_rows / cfg.batch_size) * epochs
    max_steps = int(min(math.ceil(steps), cfg.max_steps or math.inf))
    return RewardConfig(
        output_dir=tempfile.mkdtemp(prefix="rlhf_persona_reward_"),
        per_device_train_batch_size=cfg.batch_size,
        max_steps=max(1, max_steps),
        learning_rate=cfg.head_learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        activation_checkpointing=False,  # (gradient_checkpointing: a deprecated alias)
        save_strategy="no",
        report_to=[],
        logging_steps=max(1, max_steps // 10),
        disable_tqdm=False,
        max_length=None,  # rows are truncated when tokenized
        remove_unused_columns=remove_unused,
        # Several processes (accelerate launch): a batch need not touch every segment's head.
        ddp_find_unused_parameters=True,
        dataloader_num_workers=0,
        seed=seed,
        data_seed=seed,
    )


def train_phase(
    model,
    tokenizer,
    rows: Dataset,
    cfg,
    *,
    epochs: float,
    seed: int,
    run=None,
    phase: str = "train",
    collator=None,
) -> dict:
    """Train ``model`` on ``rows`` with RewardTrainer; returns timing and final metrics."""
    from trl import RewardTrainer

    args = trainer_args(cfg, n_rows=len(rows), epochs=epochs, seed=seed, remove_unused=False)
    timer = StepTimer()
    callbacks = [timer]
    if run is not None:  # loss, accuracy, margin, ... per step: W&B reward_train/PHASE/*
        from rlhf_persona.tracking import trainer_logger

        callbacks.append(trainer_logger(run, phase, "reward_train"))
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=callbacks,
        optimizers=(make_optimizer(model, cfg), None),
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(BarOnly(f"reward {phase}"))
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    history = [h for h in trainer.state.log_history if "loss" in h]
    last = history[-1] if history else {}
    return {
        "phase": phase,
        "pairs": len(rows),
        "steps": int(out.global_step),
        "train_s": seconds,
        "step_s": step_seconds(timer.times),
        "step_times": timer.times,
        "loss": float(out.training_loss),
        "final_accuracy": last.get("accuracy"),
    }


def preference_rows(chosen_ids, rejected_ids, margin=None, segment_index=None) -> Dataset:
    """The pre-tokenized Dataset RewardTrainer takes (``segment_index`` for the heads)."""
    data: dict = {"chosen_ids": chosen_ids, "rejected_ids": rejected_ids}
    if margin is not None:  # None: the plain Bradley-Terry loss, no margin term
        data["margin"] = [float(m) for m in margin]
    if segment_index is not None:
        data["segment_index"] = [int(s) for s in segment_index]
    return Dataset.from_dict(data)
