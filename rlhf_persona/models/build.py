"""Build the embedded tiny chat policies: corpus → BPE tokenizer → Llama from config → SFT.

A build is a pure function of its recipe and seed. It runs on the CPU with deterministic torch
kernels, so the same recipe and seed give byte-identical weights, and it lands in
``CACHE/embedded-<name>-<hash of recipe+seed>/``. Concurrent builds are safe: a file lock makes
the second caller wait and then find the finished folder; the folder is written under a temporary
name and renamed into place only when complete, so a half-built model is never visible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from filelock import FileLock

from rlhf_persona.models.corpus import build_corpus, corpus_texts

# Bump when the build code changes what it produces, so old cache folders are not reused.
BUILD_VERSION = 2

# Special tokens; ``<|end|>`` closes every turn and is the EOS, so generation stops at the end
# of the assistant's turn.
PAD, EOS = "<pad>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# Llama-like and prefix-stable: the prompt rendered with ``add_generation_prompt`` is a prefix of
# prompt + reply, which TRL's SFT/DPO/KTO need to split completion from prompt. The
# ``{% generation %}`` markers let SFT's ``assistant_only_loss`` mask everything but replies.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class Recipe:
    """Everything that determines an embedded build (hashed into its cache folder name)."""

    corpus_size: int = 4096
    system_share: float = 0.3
    vocab_size: int = 2048  # an upper bound: the corpus saturates it near 1,200 tokens
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 512
    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 5
    max_length: int = 256
    seed: int = 0

    def digest(self) -> str:
        payload = json.dumps({"build_version": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# Shallow and wide: in a few dozen steps a 2-layer model learns far more than a deep, narrow
# one of the same size (measured on this corpus, 50 steps: loss 1.7 for 2x256 vs 2.8 for 6x128);
# a constant 2e-3 beat 3e-3 and 6e-3 (80 steps: 0.91 vs 1.00 vs diverging). About 100 steps is
# what it takes for greedy replies to end their turn instead of repeating bullets.
RECIPES: dict[str, Recipe] = {
    # ~2M parameters: fast enough to build inside the test suite.
    "tiny-test": Recipe(),
    # ~10M parameters: the quickstart's default policy.
    "tiny": Recipe(hidden_size=512, intermediate_size=1280, num_layers=3, num_heads=8,
                   steps=120, learning_rate=1.5e-3),
}  # fmt: skip


@dataclass
class BuildResult:
    path: Path
    cache_hit: bool
    seconds: float
    parameters: int


ProgressFn = Callable[[int, int], None]  # (step done, total steps)


def build_folder(name: str, recipe: Recipe, cache_dir: Path) -> Path:
    return cache_dir / f"embedded-{name}-{recipe.digest()}"


def build_embedded(
    name: str,
    cache_dir: Path,
    *,
    progress: ProgressFn | None = None,
    **overrides,
) -> BuildResult:
    """Return the cached build of ``RECIPES[name]``, building it first if it is missing.

    ``overrides`` replace recipe fields (e.g. ``seed=1``, ``steps=2``): a different recipe, so a
    different cache folder.
    """
    recipe = replace(RECIPES[name], **overrides)
    final = build_folder(name, recipe, cache_dir)
    start = time.perf_counter()
    if final.is_dir():  # fast path, no lock needed: folders only ever appear complete
        return BuildResult(final, True, time.perf_counter() - start, _read_params(final))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if final.is_dir():  # another process built it while we waited
            return BuildResult(final, True, time.perf_counter() - start, _read_params(final))
        tmp = cache_dir / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            params = _build_into(tmp, name, recipe, progress)
            os.rename(tmp, final)  # atomic: the folder appears complete or not at all
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(final, False, time.perf_counter() - start, params)


def _read_params(folder: Path) -> int:
    return json.loads((folder / "build_info.json").read_text())["parameters"]


def _build_into(out: Path, name: str, recipe: Recipe, progress: ProgressFn | None) -> int:
    out.mkdir(parents=True)
    corpus = build_corpus(recipe.corpus_size, recipe.seed, recipe.system_share)
    tokenizer = train_tokenizer(corpus_texts(corpus), recipe.vocab_size, recipe.max_positions)
    with deterministic_torch(recipe.seed):
        model = make_model(recipe, tokenizer)
        metrics = sft_warm_start(model, tokenizer, corpus, recipe, out / "_sft", progress)
    shutil.rmtree(out / "_sft", ignore_errors=True)
    model.config.use_cache = True  # training turned the KV cache off; generation wants it
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = model.num_parameters()
    info = {
        "name": name,
        "recipe": asdict(recipe),
        "digest": recipe.digest(),
        "build_version": BUILD_VERSION,
        "parameters": params,
        "sft": metrics,
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    for file in out.iterdir():  # a shared cache: readable by every user, like the folder
        file.chmod(0o644)
    return params


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int = 512):
    """A byte-level BPE trained on the corpus, wrapped for transformers with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=max_length,
    )


def make_model(recipe: Recipe, tokenizer):
    """A randomly initialised Llama sized by the recipe (call under ``deterministic_torch``)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_heads,
        max_position_embeddings=recipe.max_positions,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Seed every generator, force deterministic kernels and one thread; restore all after.

    The caller's random states come back too: building a model on first use must not change
    what a seeded caller draws next.
    """
    import random

    import numpy as np
    import torch
    from transformers import set_seed

    saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    set_seed(seed)
    torch.use_deterministic_algorithms(True)
    # One thread: float sums then reduce in one fixed order on any machine, and on a shared,
    # loaded CPU one thread is also faster than oversubscribed ones (measured: 0.7 s vs 3-15 s
    # per step for tiny-test with two busy neighbours).
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        torch.set_num_threads(threads)
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])


def _progress_callback(fn: ProgressFn):
    """A TrainerCallback forwarding each finished step to ``fn(done, total)``."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            fn(state.global_step, state.max_steps)

    return _Progress()


def _no_checkpointing(config_cls) -> dict:
    """Checkpointing off (TRL defaults it on); newer transformers renamed the flag."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    new = "activation_checkpointing"
    return {new if new in names else "gradient_checkpointing": False}


def sft_warm_start(model, tokenizer, corpus, recipe: Recipe, scratch: Path, progress=None) -> dict:
    """A short TRL SFT run on the corpus (prompt-completion, loss on replies only), on CPU."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    # One pass over the examples the run will see; tokenizing the rest would only cost time.
    seen = corpus[: recipe.steps * recipe.batch_size]
    rows = [{"prompt": ex["prompt"], "completion": ex["completion"]} for ex in seen]
    args = SFTConfig(
        output_dir=str(scratch),
        max_steps=recipe.steps,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="constant_with_warmup",  # a decay over so few steps learns less
        warmup_steps=recipe.warmup_steps,
        max_length=recipe.max_length,
        seed=recipe.seed,
        data_seed=recipe.seed,
        # Always CPU and fp32: the build must give the same bytes on every machine class.
        use_cpu=True,
        bf16=False,
        fp16=False,
        **_no_checkpointing(SFTConfig),
        report_to=[],
        save_strategy="no",
        logging_steps=max(1, recipe.steps // 5),
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[_progress_callback(progress)] if progress else None,
    )
    result = trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "train_loss": result.training_loss,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "steps": recipe.steps,
    }
