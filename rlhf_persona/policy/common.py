"""What every policy trainer shares: chat formatting, LoRA and TRL settings, the base model.

The algorithm modules (``sft``, ``algorithms/{dpo,kto,grpo,rloo,ppo}``) stay short because
the plumbing lives here: prompts become chat messages (with the persona as system prompt when a
strategy asks for it), ``PolicyConfig`` becomes TRL's config fields, and a reward callable on plain
strings becomes a TRL reward function.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_persona.config import PolicyConfig
from rlhf_persona.errors import UserError

# fn(prompts, completions, segment_id, **kw) -> list[float]: plain-text user prompts and replies.
RewardFn = Callable[..., Sequence[float]]


def resolve_device(device: str | None = None) -> str:
    """``auto``/None → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("models.device is 'cuda' but no CUDA device is available")
    return device


def load_base(
    spec: str,
    device: str = "cpu",
    bf16: bool = False,
    cache_dir: Path | None = None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) for a policy spec via ``models.load_causal_lm``, on ``device``."""
    from rlhf_persona.distributed import local_device
    from rlhf_persona.models import load_causal_lm

    place = local_device(device)  # each process of a multi-GPU launch on its own GPU
    model, tokenizer = load_causal_lm(
        spec, cache_dir=cache_dir, device=place, attn_implementation=attn_implementation
    )
    # bf16 only pays off on a GPU; on CPU it is many times slower (docs/design.md, measured facts).
    dtype = torch.bfloat16 if bf16 and device == "cuda" else torch.float32
    model = model.to(device=place, dtype=dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@functools.lru_cache(maxsize=32)
def _template_keeps_system(template: str | None) -> bool:
    """True when the chat template renders a system message (some drop or reject it)."""
    if not template:
        return False
    from transformers.utils.chat_template_utils import render_jinja_template

    probe = "PERSONA-PROBE-7"
    try:
        rendered, _ = render_jinja_template(
            conversations=[
                [{"role": "system", "content": probe}, {"role": "user", "content": "x"}]
            ],
            chat_template=template,
        )
    except Exception:  # jinja raise_exception("system role not supported") and the like
        return False
    return probe in rendered[0]


def chat_prompt(tokenizer, prompt: str, system: str | None = None) -> list[dict[str, str]]:
    """A single user turn as chat messages, with ``system`` as the system prompt when given.

    Templates without a system role get the persona text prepended to the user turn instead, so
    the ``prompt`` strategy works with any chat model.
    """
    if not system:
        return [{"role": "user", "content": prompt}]
    if _template_keeps_system(tokenizer.chat_template):
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return [{"role": "user", "content": f"{system}\n\n{prompt}"}]


def render_prompt(tokenizer, prompt: str, system: str | None = None) -> str:
    """The text the model sees before it starts its reply."""
    return tokenizer.apply_chat_template(
        chat_prompt(tokenizer, prompt, system), tokenize=False, add_generation_prompt=True
    )


def as_reply(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def require_columns(dataset, columns: Sequence[str], algorithm: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"policy.algorithm={algorithm} needs columns {list(columns)}; the training data lacks "
            f"{missing} (has {dataset.column_names})"
        )


def load_adapter(model, path: Path, name: str = "default", trainable: bool = False, spec: str = ""):
    """``model`` with the PEFT adapter at ``path`` loaded as ``name`` (wrapped in a PeftModel
    the first time). An adapter trained on another model (e.g. a run resumed after an embedded
    model's recipe changed, which rebuilds it) is a clear error instead of PEFT's size dump."""
    from peft import PeftModel

    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name,
                                         is_trainable=trainable)  # fmt: skip
    except RuntimeError as exc:
        if "size mismatch" not in str(exc):
            raise
        raise UserError(
            f"adapter {path} does not fit the base model {spec or '(given)'}: its weight shapes "
            "differ, so it was trained on another model (an embedded model is rebuilt when its "
            "recipe changes). Start a new run (another run.name) or delete the old run folder."
        ) from None


def lora_config(cfg: PolicyConfig, model=None):
    """A fresh LoRA config for a plain base model; None when ``model`` already has an adapter
    (a warm start from the previous round's adapter keeps training that adapter)."""
    from peft import LoraConfig, PeftModel

    if isinstance(model, PeftModel):
        return None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear",  # peft excludes lm_head, which TRL requires
        task_type="CAUSAL_LM",
    )


def trainer_args(
    cfg: PolicyConfig, output_dir: Path, device: str, bf16: bool, seed: int
) -> dict[str, Any]:
    """TrainingArguments fields shared by all TRL configs, CPU-sane by default."""
    on_gpu = device == "cuda"
    return dict(
        output_dir=str(output_dir),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        adam_epsilon=cfg.adam_epsilon,
        lr_scheduler_type=cfg.lr_scheduler,  # default constant: few steps, none to waste
        warmup_steps=cfg.warmup_steps,
        seed=seed,
        data_seed=seed,
        use_cpu=not on_gpu,
        bf16=bf16 and on_gpu,  # bf16 on CPU is up to 16x slower (docs/design.md)
        # off by default: tiny models only get slower (TRL defaults it on); this name, not the
        # deprecated gradient_checkpointing, keeps transformers from warning
        activation_checkpointing=cfg.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        # One W&B run spans many trainers; transformers' W&B callback would re-key the run's
        # x-axis, so each trainer's logs reach the tracking Run via ``trainer_callbacks``.
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


_CALLBACKS: contextvars.ContextVar[tuple] = contextvars.ContextVar("callbacks", default=())


@contextlib.contextmanager
def trainer_callbacks(*callbacks):
    """Every trainer ``run_trainer`` starts inside this block also gets ``callbacks`` (e.g. the
    tracking Run's per-step logger), whatever algorithm module built it."""
    token = _CALLBACKS.set(_CALLBACKS.get() + callbacks)
    try:
        yield
    finally:
        _CALLBACKS.reset(token)


def run_trainer(trainer, anchor_base: bool = False):
    """Train without TRL's per-step printouts (the round's progress bar reports progress).
    ``anchor_base``: see ``anchor_reference_at_base``."""
    from transformers.trainer_callback import PrinterCallback

    if anchor_base:
        anchor_reference_at_base(trainer.model)
    trainer.remove_callback(PrinterCallback)
    for callback in _CALLBACKS.get():
        trainer.add_callback(callback)
    trainer.train()
    return trainer


def anchor_reference_at_base(model) -> bool:
    """When an adapter is trained further (the loop continues last round's adapters), TRL's
    DPO/KTO take a frozen copy of it, the "ref" adapter, as the reference policy: each round's
    KL budget starts from the last round's policy, so the drift from the base adds up over
    rounds. Zeroing the copy's LoRA B matrices makes it the identity, i.e. the reference is the
    base model again. Returns whether there was such a copy."""
    found = False
    for name, param in model.named_parameters():
        if ".ref." in name and "lora_B" in name:
            param.data.zero_()
            found = True
    return found


def stop_token_ids(model, tokenizer) -> list[int]:
    """End-of-turn ids: the model's generation config plus the tokenizer's EOS."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    eos = tokenizer.eos_token_id
    return ids + ([eos] if eos is not None and eos not in ids else [])


def pad_left(seqs: Sequence[Sequence[int]], pad_id: int, device: str) -> dict:
    """Left-pad so every prompt ends where generation starts (decoder-only batching)."""
    length = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for row, s in enumerate(seqs):
        input_ids[row, length - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[row, length - len(s) :] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}


def text_of(item: Any) -> str:
    """Plain text of a TRL prompt/completion: a string, or chat messages (last user/assistant)."""
    if isinstance(item, str):
        return item
    for message in reversed(item):
        if message["role"] in ("user", "assistant"):
            return message["content"]
    return item[-1]["content"]


def trl_reward_func(fn: RewardFn) -> Callable[..., list[float]]:
    """Wrap ``fn(prompts, completions, segment_id, **kw)`` on plain strings as a TRL reward func.

    TRL passes chat messages (with the persona system prompt in the ``prompt`` strategy) and every
    dataset column as a keyword; ``fn`` sees the user's question and the reply as strings, so one
    reward function serves every strategy.
    """

    def reward(prompts, completions, segment_id, **kwargs) -> list[float]:
        kwargs.pop("completion_ids", None)
        scores = fn(
            prompts=[text_of(p) for p in prompts],
            completions=[text_of(c) for c in completions],
            segment_id=[None if s is None else int(s) for s in segment_id],
            **kwargs,
        )
        return [float(s) for s in scores]

    reward.__name__ = getattr(fn, "__name__", "reward")
    return reward


def check_online_batch(cfg: PolicyConfig) -> None:
    group = cfg.section().num_generations
    if cfg.batch_size % group:
        raise UserError(
            f"policy.batch_size ({cfg.batch_size}) must be a multiple of policy.{cfg.algorithm}."
            f"num_generations ({group}) for {cfg.algorithm}: each step trains on whole groups"
        )


def online_format_row(row: dict, tokenizer) -> dict:
    """GRPO/RLOO row: the chat prompt; segment_id (and user_id, for per-user reward terms) reach
    the reward function as kwargs."""
    out = {"prompt": chat_prompt(tokenizer, row["prompt"], row.get("system"))}
    out.update({k: row[k] for k in ("segment_id", "user_id") if k in row})
    return out


def train_online(config_cls, trainer_cls, model, tokenizer, dataset, cfg, output_dir, *,
                 device, bf16, seed, reward_fn):  # fmt: skip
    """One online run (GRPO and RLOO share every argument; only TRL's classes differ)."""
    from rlhf_persona.policy.backends import vllm_trainer_kwargs

    own = cfg.section()  # a GroupSection: policy.grpo or policy.rloo
    args = config_cls(
        **vllm_trainer_kwargs(own.use_vllm, device),
        **trainer_args(cfg, output_dir, device, bf16, seed),
        beta=cfg.beta,
        num_generations=own.num_generations,
        max_completion_length=own.max_completion_length,
        temperature=own.temperature,
        num_iterations=own.num_iterations,
    )
    trainer = trainer_cls(
        model=model,
        reward_funcs=trl_reward_func(reward_fn),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora_config(cfg, model),
    )
    return run_trainer(trainer)
