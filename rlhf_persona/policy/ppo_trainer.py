"""PPO's trainer: online policy optimisation with a learned value function (clipped surrogate,
GAE, KL); ``policy/algorithms/ppo.py`` declares the algorithm and its config section.

TRL removed its value-head ``PPOTrainer`` in 1.13; this is PPO as InstructGPT describes it,
built from accelerate (devices, data parallelism, gradient accumulation), peft (the LoRA policy,
whose adapter switched off is the reference), transformers (generation, LR schedule) and TRL's
``selective_log_softmax``. One PPO step, readable top to bottom in ``PPOTrainer.step``:

1. **rollout**: one reply per prompt of the batch, sampled from the current policy;
2. **score**: the reward function rates each reply once; every reply token also gets the KL
   penalty −β·(log π − log π_ref), the reference π_ref being the base model (adapter off);
3. **advantages**: a value head (a linear layer on the LoRA model's last hidden state: the critic
   reads the policy's own features, adapter included) estimates each token's return; GAE(γ, λ) turns
   rewards and values into advantages (whitened per batch) and value targets;
4. **update**: ``num_iterations`` passes over the rollout in ``gradient_accumulation_steps``
   micro-batches: clipped surrogate + ``vf_coef`` × clipped value loss.

GRPO and RLOO replace step 3's critic with the mean reward of a group of replies to the same
prompt (docs/algorithms.md). Rows: prompts with their ``segment_id`` (the reward reads it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import TrainerState, get_scheduler
from trl.trainer.utils import selective_log_softmax

from rlhf_persona.config import PolicyConfig
from rlhf_persona.errors import UserError
from rlhf_persona.policy.common import (
    lora_config,
    pad_left,
    stop_token_ids,
    trl_reward_func,
)

EXTRA_COLUMNS = ("segment_id", "user_id")  # passed to the reward function


class PolicyWithValue(nn.Module):
    """The LoRA policy and its value head as one module (one DDP wrapper for both)."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        hidden = policy.get_input_embeddings().weight.shape[1]
        self.value_head = nn.Linear(hidden, 1)
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask, width: int):
        """Logits and values at the ``width`` positions that predict the reply's tokens (the
        prompt's positions never get a vocabulary-sized float32 tensor)."""
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            output_hidden_states=True,
            logits_to_keep=width + 1,
        )
        # The critic reads the policy's features but does not train them: value-loss gradients
        # through the shared LoRA weights would move the policy by noise (measured: with β = 1
        # the KL grew as fast as with β = 0).
        hidden = out.hidden_states[-1][:, -width - 1 : -1].detach().float()
        return out.logits[:, :-1].float(), self.value_head(hidden).squeeze(-1)


class PPOTrainer:
    """PPO on a (LoRA) causal LM; ``train()`` runs ``cfg.steps`` PPO steps.

    Like TRL's trainers it exposes ``model`` (the PeftModel) and ``state`` (``log_history``,
    ``global_step``), which is all ``train_policies`` reads.
    """

    def __init__(self, model, tokenizer, dataset, cfg: PolicyConfig, *, device, bf16, seed,
                 reward_fn):  # fmt: skip
        from accelerate import Accelerator
        from peft import get_peft_model

        if cfg.batch_size < cfg.gradient_accumulation_steps:
            raise UserError(
                f"policy.batch_size ({cfg.batch_size}) must be at least policy.gradient_"
                f"accumulation_steps ({cfg.gradient_accumulation_steps}) for ppo: each "
                "micro-batch holds one or more prompts"
            )
        self.cfg, self.tokenizer, self.dataset, self.seed = cfg, tokenizer, dataset, seed
        self.own = cfg.section("ppo")  # policy.ppo: clip range, GAE, rollout settings
        self.reward = trl_reward_func(reward_fn)
        on_gpu = device == "cuda"
        self.accelerator = Accelerator(
            cpu=not on_gpu,
            mixed_precision="bf16" if bf16 and on_gpu else "no",
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        )
        torch.manual_seed(seed)  # LoRA and value-head init, rollout sampling
        peft_cfg = lora_config(cfg, model)
        policy = model if peft_cfg is None else get_peft_model(model, peft_cfg)
        if cfg.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
            policy.enable_input_require_grads()
        wrapped = PolicyWithValue(policy).to(self.accelerator.device)
        params = [p for p in wrapped.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=cfg.adam_epsilon)
        updates = cfg.steps * self.own.num_iterations
        warmup = int(cfg.warmup_steps if cfg.warmup_steps >= 1 else cfg.warmup_steps * updates)
        # Not prepared: accelerate would step it once per process at every optimizer step.
        self.scheduler = get_scheduler(cfg.lr_scheduler, optimizer, warmup, updates)
        self.module, self.optimizer = self.accelerator.prepare(wrapped, optimizer)
        self.state = TrainerState()
        self.stop_ids = stop_token_ids(policy, tokenizer)

    @property
    def model(self):
        return self._unwrapped().policy

    @property
    def value_head(self) -> nn.Linear:
        return self._unwrapped().value_head

    def _unwrapped(self) -> PolicyWithValue:
        return self.accelerator.unwrap_model(self.module)

    # -- the algorithm ----------------------------------------------------------------------
    def train(self) -> PPOTrainer:
        for step in range(self.cfg.steps):
            metrics = self.step(self._batch(step))
            self.state.global_step = step + 1
            self.state.log_history.append({**metrics, "step": step + 1})
        return self

    def step(self, rows: dict) -> dict:
        roll = self.rollout(rows)
        adv, returns = gae(roll["rewards"], roll["values"], roll["mask"],
                           self.own.gamma, self.own.gae_lambda)  # fmt: skip
        adv = whiten(adv, roll["mask"])
        losses = []
        for _ in range(self.own.num_iterations):
            losses += self._update(roll, adv, returns)
        stats = {k: torch.stack([x[k] for x in losses]).mean() for k in losses[0]}
        mask = roll["mask"]
        kl = ((roll["logp"] - roll["ref_logp"]) * mask).sum(1)
        stats.update(
            reward=roll["scores"].mean(),
            reward_std=roll["scores"].std(),
            kl=kl.mean(),
            completion_length=mask.sum(1).mean(),
            learning_rate=torch.tensor(self.scheduler.get_last_lr()[0]),
        )
        return {k: float(self.accelerator.reduce(v.detach().float(), "mean")) for k, v in
                stats.items()}  # fmt: skip

    @torch.no_grad()
    def rollout(self, rows: dict) -> dict:
        """Sample replies, score them, and record what the update needs (old log-probs, values,
        reference log-probs, per-token rewards)."""
        cfg, tok, policy = self.cfg, self.tokenizer, self.model
        prompt = pad_left([_prompt_ids(tok, p) for p in rows["prompt"]], tok.pad_token_id,
                           self.accelerator.device)  # fmt: skip
        policy.eval()
        out = policy.generate(
            **prompt,
            do_sample=True,
            temperature=self.own.temperature,
            top_k=None,
            top_p=1.0,
            max_new_tokens=self.own.max_completion_length,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.stop_ids,
        )
        policy.train()
        reply = out[:, prompt["input_ids"].shape[1] :]
        mask = _reply_mask(reply, self.stop_ids)
        texts = tok.batch_decode(reply * mask.long() + tok.pad_token_id * (1 - mask.long()),
                                 skip_special_tokens=True)  # fmt: skip
        extra = {k: rows[k] for k in EXTRA_COLUMNS if k in rows}
        scores = torch.tensor(self.reward(prompts=rows["prompt"], completions=texts, **extra))
        ids = torch.cat([prompt["input_ids"], reply], 1)
        attn = torch.cat([prompt["attention_mask"], torch.ones_like(reply)], 1)
        width = reply.shape[1]
        logits, values = self.module(ids, attn, width)
        logp = self._logp(logits, reply)
        with policy.disable_adapter():
            ref_logits, _ = self.module(ids, attn, width)
        ref_logp = self._logp(ref_logits, reply)
        mask = mask.float()
        values = values * mask  # V(state before each reply token)
        rewards = -cfg.beta * (logp - ref_logp) * mask
        last = (mask.sum(1).long() - 1).clamp(min=0)
        rewards[torch.arange(len(last)), last] += scores.to(rewards.device)
        return dict(ids=ids, attn=attn, reply=reply, mask=mask, logp=logp, ref_logp=ref_logp,
                    values=values, rewards=rewards, scores=scores.float())  # fmt: skip

    def _update(self, roll: dict, adv: torch.Tensor, returns: torch.Tensor) -> list[dict]:
        """One pass over the rollout in micro-batches; one optimizer step per pass."""
        cfg, eps = self.cfg, self.own.clip_range
        width = roll["reply"].shape[1]
        stats = []
        chunks = torch.arange(len(adv)).chunk(cfg.gradient_accumulation_steps)
        for idx in chunks:
            with self.accelerator.accumulate(self.module):
                logits, values = self.module(roll["ids"][idx], roll["attn"][idx], width)
                logp = self._logp(logits, roll["reply"][idx])
                mask, a, ret = roll["mask"][idx], adv[idx], returns[idx]
                ratio = torch.exp(logp - roll["logp"][idx])
                pg = torch.max(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps))
                old_v = roll["values"][idx]
                v_clip = old_v + (values - old_v).clamp(-eps, eps)
                vf = 0.5 * torch.max((values - ret) ** 2, (v_clip - ret) ** 2)
                pg_loss, vf_loss = masked_mean(pg, mask), masked_mean(vf, mask)
                loss = pg_loss + self.own.vf_coef * vf_loss
                self.accelerator.backward(loss)
                if self.accelerator.sync_gradients:  # the pass's last micro-batch
                    self.accelerator.clip_grad_norm_(self.module.parameters(), 1.0)
                self.optimizer.step()  # a no-op until then (accelerate's accumulation)
                if self.accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            clipped = ((ratio - 1).abs() > eps).float()
            stats.append(
                dict(
                    loss=loss.detach(),
                    policy_loss=pg_loss.detach(),
                    value_loss=vf_loss.detach(),
                    clip_ratio=masked_mean(clipped, mask),
                )
            )
        return stats

    def _logp(self, logits: torch.Tensor, reply: torch.Tensor) -> torch.Tensor:
        """Log-probs of the reply tokens under the sampling distribution (logits / T)."""
        return selective_log_softmax(logits / self.own.temperature, reply)

    def _batch(self, step: int) -> dict:
        """This process's share of step ``step``'s prompts: a seeded draw of batch_size ×
        processes rows, so data-parallel ranks train on different prompts."""
        acc = self.accelerator
        n = self.cfg.batch_size * acc.num_processes
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        idx = torch.randint(len(self.dataset), (n,), generator=g)
        mine = idx[acc.process_index * self.cfg.batch_size :][: self.cfg.batch_size]
        return self.dataset[mine.tolist()]


def gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimates and returns over reply tokens (values past the end: 0)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, adv + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def _prompt_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _reply_mask(reply: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """True up to and including each reply's first stop token."""
    stop = torch.isin(reply, torch.tensor(stop_ids, device=reply.device))
    after = (stop.cumsum(1) - stop.long()) > 0  # strictly after the first stop
    return ~after
